"""The fleet: records clips, decides which are uploaded and writes those to landing as MCAP.

The condition mix drifts linearly from `sim.conditions_start` to `sim.conditions_end` over
`sim.drift_clips` recorded clips; the running count lives in the store (`layout.SIM_STATE`),
so successive `simulate` calls continue the drift. Everything is a function of (seed, clip
index): same seed + same state gives byte-identical clips.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from flywheel import layout
from flywheel import progress as bars
from flywheel.clips import write_clip
from flywheel.config import CONDITIONS, Settings
from flywheel.sim.render import RoadWorld, World, check_world_classes, encode_jpeg
from flywheel.sim.scene import EXTRAS, SimExtras, condition_mix
from flywheel.store import Store

if TYPE_CHECKING:
    # Annotations only: flywheel.engine imports onnxruntime, which the simulator does not need.
    from flywheel.engine.shadow import UploadFilter


def read_state(store: Store) -> dict[str, int]:
    """The simulator's running counts: `recorded` clips (drives the drift) and `uploaded` ones."""
    key = layout.SIM_STATE
    if not store.exists(key):
        return {"recorded": 0, "uploaded": 0}
    state = store.read_json(key)
    if not isinstance(state, dict) or not all(
        isinstance(state.get(k), int) for k in ("recorded", "uploaded")
    ):
        raise ValueError(
            f"{store.uri(key)} needs integer 'recorded' and 'uploaded' counts, got {state!r}"
        )
    return state


def simulate(
    store: Store,
    settings: Settings,
    *,
    clips: int,
    seed: int = 0,
    upload_filter: UploadFilter | None = None,
    progress: bool = False,
    extras: SimExtras = EXTRAS,
    world: World | None = None,
) -> list[str]:
    """Drive the fleet until `clips` clips are uploaded (`layout.landing_key`); returns their keys.

    Every recorded clip gets a trigger: `hard_brake` (likelier the closer something is ahead),
    else the `upload_filter`'s answer (shadow mode, e.g. `low_confidence`), else `random`
    (always without a filter; for `random_upload_share` of the clips with one). Clips
    without a trigger are recorded (they advance the drift and the clock) but not uploaded.
    `world`: what the fleet sees; None: the built-in road scenes (`RoadWorld`).
    """
    world = world if world is not None else RoadWorld(extras)
    check_world_classes(world, settings.classes)
    if clips < 0 or seed < 0:
        raise ValueError(f"simulate needs clips >= 0 and seed >= 0, got clips={clips}, seed={seed}")
    state = read_state(store)
    recorded = state["recorded"]
    keys: list[str] = []
    with bars.bar(total=clips, desc="simulate", unit="clip", progress=bool(progress)) as bar:
        while len(keys) < clips:
            key, data = _record(recorded, seed, settings, upload_filter, extras, world)
            recorded += 1
            if key is None:
                continue
            store.write_bytes(key, data)
            keys.append(key)
            bar.update()
    # Written last: a crash before this re-records the same clips (same keys, same bytes) next time.
    store.write_json(
        layout.SIM_STATE, {"recorded": recorded, "uploaded": state["uploaded"] + len(keys)}
    )
    return keys


def _record(index: int, seed: int, settings: Settings, upload_filter, extras: SimExtras, world: World):
    """Record clip number `index`: (key, MCAP bytes), or (None, None) when nothing triggers its upload."""
    sim = settings.sim
    rng = np.random.default_rng([seed, index])
    mix = condition_mix(sim, index)
    condition = CONDITIONS[rng.choice(len(CONDITIONS), p=np.array([mix[c] for c in CONDITIONS]))]
    r = world.record(rng, condition, index, settings)
    vehicle_id = f"veh{index % sim.vehicles:03d}"
    start = _clock(rng, index, condition, extras)
    meta = {
        "clip_id": f"{vehicle_id}-{index:06d}-s{seed}", "vehicle_id": vehicle_id,
        "recorded_at": start.isoformat(timespec="seconds"), "condition": condition,
    }  # fmt: skip
    closest = min(r.ahead_m)
    p_brake = extras.hard_brake_max * float(np.clip(1 - closest / extras.hard_brake_range, 0, 1))
    trigger = "hard_brake" if rng.random() < p_brake else None
    coin = rng.random()
    if trigger is None and upload_filter is not None:
        trigger = upload_filter(np.stack(r.frames[sim.cameras[0]]), dict(meta))
        if trigger is not None and (not isinstance(trigger, str) or not trigger):
            raise ValueError(f"upload_filter must return a trigger name or None, got {trigger!r}")
    if trigger is None and (upload_filter is None or coin < extras.random_upload_share):
        trigger = "random"
    if trigger is None:
        return None, None
    meta["trigger"] = trigger
    t0 = int(start.timestamp()) * 1_000_000_000
    times = [t0 + round(i * 1e9 / sim.fps) for i in range(sim.frames_per_clip)]
    frames = [
        (cam, times[i], "jpeg", encode_jpeg(f, extras.jpeg_quality))
        for cam in sim.cameras
        for i, f in enumerate(r.frames[cam])
    ]
    encoding = sim.encodings[index % len(sim.encodings)]
    data = write_clip(meta, frames, list(zip(times, r.labels, strict=True)), encoding=encoding)
    return layout.landing_key(vehicle_id, start.date().isoformat(), meta["clip_id"]), data


def _clock(rng, index: int, condition: str, extras: SimExtras) -> datetime:
    """When clip `index` was recorded: the day moves every clips_per_day clips; night clips happen at night."""
    day = extras.start_date + timedelta(days=index // extras.clips_per_day)
    hour = (20 + rng.uniform(0, 9)) % 24 if condition == "night" else rng.uniform(7, 19)
    return day + timedelta(seconds=int(hour * 3600))
