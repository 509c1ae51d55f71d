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
    record: int | None = None,
) -> list[str]:
    """Drive the fleet until `clips` clips are uploaded (`layout.landing_key`); returns their keys.

    Every recorded clip gets a trigger: `hard_brake` (likelier the closer something is ahead),
    else the `upload_filter`'s answer (shadow mode, e.g. `low_confidence`), else `random`
    (always without a filter; for `random_upload_share` of the clips with one). Clips
    without a trigger are recorded (they advance the drift and the clock) but not uploaded.
    `world`: what the fleet sees; None: the built-in road scenes (`RoadWorld`).

    `record`: a fixed upload budget instead. The fleet records exactly `record` clips (the same
    clips, whatever the filter) and uploads `clips` of them: hard brakes first, then the
    filter's picks, with `random_upload_share` of the remaining room kept for clips it did not
    flag, then random ones; ties broken by a draw seeded by (seed, clip index), so two fleets
    with different filters see the same recordings and the same hard brakes.
    """
    world = world if world is not None else RoadWorld(extras)
    check_world_classes(world, settings.classes)
    if clips < 0 or seed < 0:
        raise ValueError(f"simulate needs clips >= 0 and seed >= 0, got clips={clips}, seed={seed}")
    if record is not None and record < clips:
        raise ValueError(f"simulate needs record >= clips (it uploads clips of the recorded ones), got record={record}, clips={clips}")
    state = read_state(store)
    recorded = state["recorded"]
    keys: list[str] = []
    with bars.bar(total=clips, desc="simulate", unit="clip", progress=bool(progress)) as bar:
        if record is not None:
            for key, data in _record_budget(recorded, record, clips, seed, settings, upload_filter, extras, world):
                store.write_bytes(key, data)
                keys.append(key)
                bar.update()
            recorded += record
        while record is None and len(keys) < clips:
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


def _scene(index: int, seed: int, settings: Settings, extras: SimExtras, world: World):
    """Clip number `index` as recorded: (recording, meta, start time, its event trigger or None, a coin)."""
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
    event = "hard_brake" if rng.random() < p_brake else None
    return r, meta, start, event, rng.random()


def _shadow(upload_filter, r, meta: dict, settings: Settings) -> str | None:
    """The upload filter's trigger for a recording (None: not flagged)."""
    trigger = upload_filter(np.stack(r.frames[settings.sim.cameras[0]]), dict(meta))
    if trigger is not None and (not isinstance(trigger, str) or not trigger):
        raise ValueError(f"upload_filter must return a trigger name or None, got {trigger!r}")
    return trigger


def _record(index: int, seed: int, settings: Settings, upload_filter, extras: SimExtras, world: World):
    """Record clip number `index`: (key, MCAP bytes), or (None, None) when nothing triggers its upload."""
    r, meta, start, trigger, coin = _scene(index, seed, settings, extras, world)
    if trigger is None and upload_filter is not None:
        trigger = _shadow(upload_filter, r, meta, settings)
    if trigger is None and (upload_filter is None or coin < extras.random_upload_share):
        trigger = "random"
    if trigger is None:
        return None, None
    return _encode(index, r, meta, start, trigger, settings, extras)


def _record_budget(first: int, record: int, clips: int, seed: int, settings: Settings, upload_filter,
                   extras: SimExtras, world: World):  # fmt: skip
    """Record clips first .. first+record-1 and yield (key, MCAP bytes) of the `clips` uploaded, in recording order."""
    scenes = [(i, *_scene(i, seed, settings, extras, world)) for i in range(first, first + record)]
    events, flagged, plain = [], [], []
    for i, r, meta, _, event, _ in scenes:
        if event is not None:
            events.append((i, event))
        elif upload_filter is not None and (trigger := _shadow(upload_filter, r, meta, settings)) is not None:
            flagged.append((i, trigger))
        else:
            plain.append((i, "random"))
    draw = np.random.default_rng([seed, first, record])  # the same draw for every filter

    def pick(pool: list, n: int) -> list:
        return [pool[k] for k in sorted(draw.permutation(len(pool))[:n])] if n < len(pool) else pool

    chosen = pick(events, clips)
    room = clips - len(chosen)
    kept_random = min(len(plain), round(room * extras.random_upload_share)) if upload_filter is not None else room
    n_shadow = min(len(flagged), room - kept_random)
    n_plain = min(len(plain), room - n_shadow)
    n_shadow = min(len(flagged), room - n_plain)  # too few unflagged clips: more of the flagged ones
    chosen += pick(flagged, n_shadow) + pick(plain, n_plain)
    triggers = dict(chosen)
    for i, r, meta, start, _, _ in scenes:
        if i in triggers:
            yield _encode(i, r, meta, start, triggers[i], settings, extras)


def _encode(index: int, r, meta: dict, start: datetime, trigger: str, settings: Settings, extras: SimExtras):
    """(landing key, MCAP bytes) of a recording uploaded with `trigger`."""
    sim = settings.sim
    meta = {**meta, "trigger": trigger}
    t0 = int(start.timestamp()) * 1_000_000_000
    times = [t0 + round(i * 1e9 / sim.fps) for i in range(sim.frames_per_clip)]
    frames = [
        (cam, times[i], "jpeg", encode_jpeg(f, extras.jpeg_quality))
        for cam in sim.cameras
        for i, f in enumerate(r.frames[cam])
    ]
    encoding = sim.encodings[index % len(sim.encodings)]
    boxes = []  # where the world reports boxes: every frame annotated, [] where nothing is in view
    if r.boxes is not None:
        boxes = [(cam, times[i], r.boxes[cam][i]) for cam in sim.cameras for i in range(len(times))]
    data = write_clip(
        meta, frames, list(zip(times, r.labels, strict=True)), encoding=encoding, boxes=boxes
    )
    return layout.landing_key(meta["vehicle_id"], start.date().isoformat(), meta["clip_id"]), data


def _clock(rng, index: int, condition: str, extras: SimExtras) -> datetime:
    """When clip `index` was recorded: the day moves every clips_per_day clips; night clips happen at night."""
    day = extras.start_date + timedelta(days=index // extras.clips_per_day)
    hour = (20 + rng.uniform(0, 9)) % 24 if condition == "night" else rng.uniform(7, 19)
    return day + timedelta(seconds=int(hour * 3600))
