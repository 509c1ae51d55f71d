"""Scene sampling and the labels of a scene: the simulator's world, with no pixels.

Task: "what is ahead" in the ego lane, one label per frame, from the default six classes.
A clip is a short drive through one sampled scene: a road with a curve, scenery (trees,
buildings, parked cars, oncoming traffic, people on the sidewalk, green lights) and at most a
few actors that move over time, so the label can change inside a clip (a pedestrian crosses
into the lane, a car changes lane, a light turns green, the car passes an obstacle). Objects
vary in size, colour, position and distance. Also here: the simulator's knobs (`SimExtras`),
the class check and the condition drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import cv2
import numpy as np

from flywheel.config import CONDITIONS, DEFAULT_CLASSES, SimSettings

if TYPE_CHECKING:
    from flywheel.sim.draw import Camera


@dataclass(frozen=True)
class SimExtras:
    """Simulator knobs not (yet) in config.SimSettings; defaults are the standard recipe."""

    focal: float = 1.1  # focal length in image widths (about 49 degrees horizontal field of view)
    camera_height: float = 1.4  # metres above the road
    ahead_range: tuple[float, float] = (4.0, 18.0)  # metres: nearer/farther objects are not "ahead"
    lane_half_width: float = 1.9  # metres from the ego lane centre that count as "ahead"
    hard_brake_range: float = 14.0  # metres: closer things ahead make a hard brake likely
    hard_brake_max: float = 0.7  # probability of a hard brake with something at 0 m
    random_upload_share: float = (
        0.25  # with an upload filter: share of untriggered clips uploaded anyway
    )
    clips_per_day: int = 200  # the simulated clock moves one day per this many recorded clips
    start_date: datetime = datetime(2025, 1, 6, tzinfo=UTC)
    jpeg_quality: int = 90
    # Scene-level share of the main actor's class (per-frame shares differ: actors leave and enter).
    class_mix: dict[str, float] = field(
        default_factory=lambda: {
            "clear_road": 0.10,
            "vehicle": 0.20,
            "pedestrian": 0.19,
            "cyclist": 0.18,
            "red_light": 0.15,
            "obstacle": 0.18,
        }  # fmt: skip
    )


EXTRAS = SimExtras()


# ---------------------------------------------------------------- validation, drift


def check_classes(classes: list[str]) -> None:
    """Raise ValueError unless `classes` are the renderer's six classes (any order)."""
    unknown = [c for c in classes if c not in DEFAULT_CLASSES]
    if unknown:
        raise ValueError(
            f"the simulator cannot render class(es) {unknown}; it knows {DEFAULT_CLASSES}"
        )
    missing = [c for c in DEFAULT_CLASSES if c not in classes]
    if missing:
        raise ValueError(f"the simulator renders class(es) {missing} that settings.classes lacks")


def condition_mix(sim: SimSettings, clips_so_far: int) -> dict[str, float]:
    """Share of each condition after `clips_so_far` recorded clips: linear from start to end."""
    a = min(1.0, max(0, clips_so_far) / sim.drift_clips)
    start = _normalized(sim.conditions_start)
    end = _normalized(sim.conditions_end)
    return {c: (1 - a) * start[c] + a * end[c] for c in CONDITIONS}


def _normalized(shares: dict[str, float]) -> dict[str, float]:
    total = sum(shares.values())
    return {c: shares.get(c, 0.0) / total for c in CONDITIONS}


# ---------------------------------------------------------------- scene sampling


@dataclass
class Actor:
    """Something in the world, in road coordinates: `d` metres ahead, `x` metres right of the ego lane centre."""

    kind: str  # a class name, or a scenery kind: tree, parked, oncoming, walker, light
    d0: float
    x0: float
    vd: float = 0.0  # m/s, relative to the ego car (negative: getting closer)
    vx: float = 0.0  # m/s, positive: to the right
    look: dict = field(default_factory=dict)  # sizes (m), colours (RGB), variant

    def at(self, t: float) -> tuple[float, float]:
        return self.d0 + self.vd * t, self.x0 + self.vx * t


@dataclass
class Scene:
    condition: str
    ego_speed: float  # m/s
    curve: float  # 1/m: lateral road offset is curve * d**2
    urban: bool
    sky_top: tuple
    sky_horizon: tuple
    ground: tuple
    asphalt: tuple
    buildings: list  # (u0, u1 in image widths, height in image heights, colour)
    actors: list[Actor]  # scenery and the actors that make the labels
    weather: dict  # per-clip parameters of the condition


def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


def _colour(rng, base, jitter=18):
    return tuple(float(np.clip(c + rng.uniform(-jitter, jitter), 0, 255)) for c in base)


_CAR_COLOURS = [(225, 225, 228), (28, 28, 32), (150, 153, 160), (165, 30, 30), (35, 65, 150),
                (95, 100, 105), (60, 95, 65), (200, 175, 60), (120, 40, 40)]  # fmt: skip
_SKIN = [(235, 200, 170), (200, 150, 110), (140, 95, 65), (90, 60, 40)]


def _random_rgb(rng, lo=20, hi=235):
    return tuple(float(v) for v in rng.uniform(lo, hi, 3))


def _car_look(rng) -> dict:
    truck = rng.random() < 0.15
    return {
        "w": _u(rng, 2.3, 2.6) if truck else _u(rng, 1.6, 2.0),
        "h": _u(rng, 2.6, 3.4) if truck else _u(rng, 1.3, 1.8),
        "body": _colour(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))]),
        "brake": _u(rng, 0.3, 1.0),  # tail light intensity
    }


def _vivid_rgb(rng) -> tuple:
    """A saturated colour of random hue (clothes stand out from grey asphalt and green verges)."""
    hsv = np.array(
        [[[rng.uniform(0, 180), rng.uniform(170, 255), rng.uniform(160, 250)]]], np.uint8
    )
    return tuple(float(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _person_look(rng) -> dict:
    return {
        "h": _u(rng, 1.6, 2.0), "skin": _colour(rng, _SKIN[rng.integers(len(_SKIN))], 10),
        "shirt": _vivid_rgb(rng), "legs": _random_rgb(rng, 15, 120), "phase": _u(rng, 0, 6.3),
    }  # fmt: skip


# Seconds into the clip at which the main actor is where its start distance was drawn: half of
# a default clip (8 frames at 5 fps). Objects drawn at a distance d "mid-clip" stay in
# ahead_range for most of the clip even when the ego car closes in on them quickly.
_MID_CLIP = 0.7


def _sample_main_actor(rng, kind: str, ego: float) -> list[Actor]:
    """The actor(s) whose presence in the ego lane gives the labels, with their motion.

    Distances are drawn mid-clip within 6-15 m (a 64 px model sees a person there as 7-20 px
    tall); things standing still on the road start farther by what the ego car drives by then.
    """
    side = 1.0 if rng.random() < 0.5 else -1.0
    closing = _MID_CLIP * ego  # metres the ego car drives towards a standing object by mid-clip
    if kind == "vehicle":
        vd = _u(rng, -3, 3)
        lead = Actor("vehicle", _u(rng, 6, 13) - _MID_CLIP * vd, _u(rng, -0.3, 0.3), vd=vd,
                     look=_car_look(rng))  # fmt: skip
        event = rng.random()
        if event < 0.15:  # changes lane out of ours
            lead.vx = side * _u(rng, 1.0, 2.5)
        elif event < 0.27:  # cuts in from the left lane
            lead.x0, lead.vx = -3.5, _u(rng, 1.5, 3.0)
        return [lead]
    if kind == "pedestrian":
        look = _person_look(rng)
        if rng.random() < 0.5:  # crossing
            return [Actor("pedestrian", _u(rng, 5, 12) + closing, side * _u(rng, 0.3, 2.6), -ego,
                          -side * _u(rng, 0.8, 1.9), look)]  # fmt: skip
        return [Actor("pedestrian", _u(rng, 5, 12) + closing, _u(rng, -1.2, 1.2), -ego,
                      _u(rng, -0.4, 0.4), look)]  # fmt: skip
    if kind == "cyclist":
        look = _person_look(rng) | {"bike": _vivid_rgb(rng), "helmet": _vivid_rgb(rng)}
        if rng.random() < 0.6:  # crossing, seen from the side
            return [Actor("cyclist", _u(rng, 5, 12) + closing, side * _u(rng, 0.5, 4.0), -ego,
                          -side * _u(rng, 1.5, 3.5), look | {"side": True})]  # fmt: skip
        vd = _u(rng, 3, 7) - ego
        return [Actor("cyclist", _u(rng, 5, 12) - _MID_CLIP * vd, _u(rng, -0.9, 0.9), vd, 0.0,
                      look | {"side": False})]  # fmt: skip
    if kind == "red_light":
        switch = _u(rng, 0.3, 1.4) if rng.random() < 0.15 else None  # turns green at this time (s)
        light = _traffic_light(rng, "red", switch, near=True)
        light.vd = -min(ego, 3.0)  # slowing down towards the light
        light.d0 += _MID_CLIP * min(ego, 3.0)
        return [light]
    if kind == "obstacle":
        variant = ["cones", "box", "rock", "barrier"][rng.integers(4)]
        look = {"variant": variant, "n": int(rng.integers(2, 4)), "w": _u(rng, 0.8, 1.4), "h": _u(rng, 0.6, 1.0),
                "colour": _colour(rng, {"cones": (245, 110, 15), "box": (150, 105, 60), "rock": (110, 100, 90),
                                        "barrier": (225, 35, 30)}[variant])}  # fmt: skip
        return [Actor("obstacle", _u(rng, 5, 12) + closing, _u(rng, -1.0, 1.0), -ego, 0.0, look)]
    return []


def _traffic_light(rng, state: str, switch: float | None = None, *, near: bool = False) -> Actor:
    """A light on a pole right of the road or on a gantry over it; `near`: 6-15 m ahead mid-clip.

    Near overhead lights stay 11 m or farther: closer, the camera (about 16 degrees above the
    horizon) would not see them.
    """
    overhead = rng.random() < 0.5
    if near:
        d = _u(rng, 11, 15) if overhead else _u(rng, 6, 13)
    else:
        d = _u(rng, 9, 30)
    return Actor(
        "red_light" if state == "red" else "light", d,
        _u(rng, -0.5, 0.8) if overhead else _u(rng, 2.2, 2.8), 0.0, 0.0,
        {"overhead": overhead, "state": state, "switch": switch, "pole": _u(rng, 2.7, 3.2)},
    )  # fmt: skip


def _sample_scenery(rng, ego: float, urban: bool, oncoming: float = 0.4) -> list[Actor]:
    """Things that are never "ahead": trees, parked cars, oncoming cars, people on the sidewalk, green lights."""
    out = []
    for _ in range(rng.integers(1, 5)):
        out.append(Actor("tree", _u(rng, 4, 90), (1 if rng.random() < 0.6 else -1) * _u(rng, 5.5, 11), -ego, 0.0,
                         {"h": _u(rng, 3, 8), "r": _u(rng, 1.0, 2.6), "green": _colour(rng, (50, 95, 45), 25)}))  # fmt: skip
    for _ in range(rng.integers(0, 4) if rng.random() < (0.5 if urban else 0.2) else 0):
        out.append(Actor("parked", _u(rng, 5, 45), _u(rng, 3.0, 3.9), -ego, 0.0, _car_look(rng)))
    if rng.random() < oncoming:
        out.append(
            Actor(
                "oncoming",
                _u(rng, 15, 60),
                _u(rng, -4.0, -3.1),
                -ego - _u(rng, 5, 14),
                0.0,
                _car_look(rng),
            )
        )
    if rng.random() < 0.15:
        out.append(Actor("walker", _u(rng, 5, 30), _u(rng, 3.3, 4.8) * (1 if rng.random() < 0.7 else -1.4),
                         -ego, 0.0, _person_look(rng)))  # fmt: skip
    if rng.random() < 0.1:
        out.append(_traffic_light(rng, "green" if rng.random() < 0.7 else "amber"))
        out[-1].vd = -ego
    return out


def _sample_weather(rng, condition: str) -> dict:
    if condition == "day":
        return {"gain": _u(rng, 0.8, 1.15), "noise": _u(rng, 1.5, 4)}
    if condition == "night":
        return {"ambient": _u(rng, 0.01, 0.05), "beam": _u(rng, 0.8, 1.3), "reach": _u(rng, 3.5, 7.5),
                "noise": _u(rng, 12, 22), "lamps": rng.random() < 0.3, "glare": _u(rng, 0, 1)}  # fmt: skip
    if condition == "rain":
        return {"gain": _u(rng, 0.6, 0.85), "contrast": _u(rng, 0.35, 0.6), "grey": _u(rng, 100, 150),
                "streaks": int(rng.integers(15, 45)), "wind": _u(rng, -0.5, 0.5), "blur": _u(rng, 0.8, 1.5),
                "drops": int(rng.integers(1, 6)), "noise": _u(rng, 4, 8)}  # fmt: skip
    if condition == "fog":
        return {"gain": _u(rng, 0.85, 1.05), "beta": _u(rng, 0.1, 0.2), "air": _u(rng, 175, 225),
                "blur": _u(rng, 0.5, 1.1), "noise": _u(rng, 3, 6)}  # fmt: skip
    raise ValueError(f"unknown condition {condition!r}; known: {CONDITIONS}")


def sample_scene(
    rng: np.random.Generator, condition: str, *, urban: bool, extras: SimExtras = EXTRAS
) -> Scene:
    """One random scene for a clip in `condition`, in town (buildings, parked cars) or in the country."""
    weather = _sample_weather(rng, condition)
    names = list(extras.class_mix)
    p = np.array([extras.class_mix[n] for n in names])
    kind = names[rng.choice(len(names), p=p / p.sum())]
    ego = _u(rng, 5, 14) if kind in ("vehicle", "clear_road") else _u(rng, 2, 6)
    # At night, more headlights in the other lane dazzle the camera.
    oncoming = 0.4 + 0.4 * weather.get("glare", 0.0)
    actors = _sample_scenery(rng, ego, urban, oncoming) + _sample_main_actor(rng, kind, ego)
    if rng.random() < 0.2:  # a second actor farther away, sometimes the next label
        second = names[rng.choice(len(names), p=p / p.sum())]
        for a in _sample_main_actor(rng, second, ego):
            a.d0 += 12
            actors.append(a)
    sky = {
        "day": (
            (_u(rng, 60, 110), _u(rng, 120, 160), _u(rng, 200, 245)),
            (_u(rng, 170, 200), _u(rng, 195, 215), 235.0),
        ),
        "night": ((4.0, 6.0, 14.0), (_u(rng, 14, 40), _u(rng, 14, 30), _u(rng, 22, 35))),
        "rain": ((_u(rng, 95, 125),) * 3, (_u(rng, 130, 160),) * 3),
        "fog": ((_u(rng, 185, 215),) * 3, (_u(rng, 195, 225),) * 3),
    }[condition]
    if condition == "day" and rng.random() < 0.3:  # overcast
        sky = ((_u(rng, 150, 185),) * 3, (_u(rng, 185, 215),) * 3)
    buildings = []
    if urban:
        u = _u(rng, -0.1, 0.05)
        while u < 1.0:
            w = _u(rng, 0.06, 0.2)
            buildings.append((u, u + w, _u(rng, 0.08, 0.3), _colour(rng, (130, 115, 100), 45)))
            u += w + _u(rng, 0.0, 0.08)
    return Scene(
        condition=condition, ego_speed=ego, curve=_u(rng, -0.0015, 0.0015), urban=urban,
        sky_top=sky[0], sky_horizon=sky[1],
        ground=_colour(rng, (125, 125, 120), 15) if urban else _colour(rng, (80, 110, 55), 20),
        asphalt=_colour(rng, (88.0 + _u(rng, -18, 18),) * 3, 4), buildings=buildings, actors=actors, weather=weather,
    )  # fmt: skip


def _scene_for(rng, condition: str, clip_index: int) -> Scene:
    """The scene of clip `clip_index`: a 4-clip stretch of the route is all town or all country."""
    return sample_scene(rng, condition, urban=(clip_index // 4) % 2 == 0)


# ---------------------------------------------------------------- labels: what is ahead
# A frame's label is judged in the reference camera's view (`Camera.sees`); the light's state
# and height are needed here and by the drawing (draw.py).


def _light_state(look, t) -> str:
    """The lit lamp at time t: a light with a `switch` time turns green then."""
    return "green" if look["switch"] is not None and t >= look["switch"] else look["state"]


def _light_top(look) -> float:
    """Height (m) of the top of the light's housing: gantries are 4.6 m high, poles vary."""
    return 4.6 if look["overhead"] else look["pole"]


def _ahead(a: Actor, t: float, cam: Camera, curve: float, extras: SimExtras) -> float | None:
    """Distance (m) of `a` if it is the kind of thing that counts as "ahead" and is ahead at time t."""
    if a.kind not in DEFAULT_CLASSES:
        return None
    d, x = a.at(t)
    lo, hi = extras.ahead_range
    if not lo <= d <= hi:
        return None
    if a.kind == "red_light":
        if _light_state(a.look, t) != "red":
            return None
        # The lower half of the red lamp (the top one, centred 0.2 m below the top) must be in view.
        top = _light_top(a.look)
        return d if cam.sees(d, x - 0.2, x + 0.2, top - 0.42, top - 0.2, curve) else None
    if abs(x) > extras.lane_half_width:
        return None
    return d if cam.sees(d, x - 0.3, x + 0.3, 0.0, 1.0, curve) else None


# The class of each kind of thing for its 2-D box: scenery cars and people are vehicles and
# pedestrians too, though never "ahead" (a detector must find them all); trees and lights that are
# not red have no class.
_BOX_CLASS = {"vehicle": "vehicle", "parked": "vehicle", "oncoming": "vehicle", "pedestrian": "pedestrian",
              "walker": "pedestrian", "cyclist": "cyclist", "red_light": "red_light", "obstacle": "obstacle"}  # fmt: skip


def _box_class(a: Actor, t: float) -> str | None:
    """The class of `a`'s 2-D box at time t, None for none (a red light that has turned green has none)."""
    if a.kind == "red_light" and _light_state(a.look, t) != "red":
        return None
    return _BOX_CLASS.get(a.kind)


def _label(scene: Scene, t: float, cam: Camera, extras: SimExtras) -> tuple[str, float]:
    """The nearest thing ahead at time t and its distance (m); clear_road and inf if none."""
    best = ("clear_road", float("inf"))
    for a in scene.actors:
        d = _ahead(a, t, cam, scene.curve, extras)
        if d is not None and d < best[1]:
            best = (a.kind, d)
    return best
