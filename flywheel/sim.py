"""The fleet simulator: procedural forward-camera road scenes, written as MCAP clips (DESIGN.md §1, §6).

Task: "what is ahead" in the ego lane, one label per frame, from the default six classes.
A clip is a short drive (frames_per_clip at fps) through one sampled scene: a road with a
curve, scenery (trees, buildings, parked cars, oncoming traffic, people on the sidewalk,
green lights) and at most a few actors that move over time, so consecutive frames look alike
and the label can change inside a clip (a pedestrian crosses into the lane, a car changes
lane, a light turns green, the car passes an obstacle).

Rendering: geometry is drawn with OpenCV at sub-pixel precision into three layers (albedo,
light sources, depth in metres); the weather then acts on whole clips at once with numpy:
day (exposure), night (headlight cone with distance falloff, glowing lamps, strong sensor
noise), rain (low contrast, streaks, blur, drops on the lens), fog (haze that grows with
depth). Objects vary in size, colour, position and distance, so the day task is learnable
and the night/fog tasks are hard.

The condition mix drifts linearly from `sim.conditions_start` to `sim.conditions_end` over
`sim.drift_clips` recorded clips; the running count lives in the store (`sim/state.json`),
so successive `simulate` calls continue the drift. Everything is a function of (seed, clip
index): same seed + same state gives byte-identical clips.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
from tqdm import tqdm

from flywheel.clips import write_clip
from flywheel.config import CONDITIONS, DEFAULT_CLASSES, Settings, SimSettings
from flywheel.store import Store

STATE_KEY = "sim/state.json"
LANDING = "landing"
SKY_DEPTH = 1000.0  # metres; "infinitely far" in the depth layer

# An upload filter sees the first camera's frames (N, H, W, 3) uint8 RGB (before JPEG) and the
# clip metadata, and returns a trigger name (e.g. "low_confidence") or None (don't upload).
UploadFilter = Callable[[np.ndarray, dict], "str | None"]


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


# ---------------------------------------------------------------- validation, drift, state


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


def read_state(store: Store) -> dict[str, int]:
    """The simulator's running counts: `recorded` clips (drives the drift) and `uploaded` ones."""
    if not store.exists(STATE_KEY):
        return {"recorded": 0, "uploaded": 0}
    state = store.read_json(STATE_KEY)
    if not isinstance(state, dict) or not all(
        isinstance(state.get(k), int) for k in ("recorded", "uploaded")
    ):
        raise ValueError(
            f"{store.uri(STATE_KEY)} needs integer 'recorded' and 'uploaded' counts, got {state!r}"
        )
    return state


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


# ---------------------------------------------------------------- camera and painter


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    focal: float  # pixels
    height_m: float  # mounting height
    lateral: float  # metres right of the ego lane centre
    horizon: float  # image row of the horizon

    def project(self, d, x, y, curve):
        """Road coordinates (d ahead, x right, y up; metres) to image (u, v) pixels."""
        u = self.width / 2 + self.focal * (x - self.lateral + curve * d * d) / d
        v = self.horizon + self.focal * (self.height_m - y) / d
        return u, v

    def sees(self, d, x0, x1, y0, y1, curve) -> bool:
        """Whether an upright box at distance d (metres) overlaps the image."""
        (ua, va), (ub, vb) = self.project(d, x0, y0, curve), self.project(d, x1, y1, curve)
        return (
            max(ua, ub) >= 0
            and min(ua, ub) < self.width
            and max(va, vb) >= 0
            and min(va, vb) < self.height
        )


def camera_for(settings: Settings, camera: str, *, extras: SimExtras = EXTRAS) -> Camera:
    """The camera named `camera`: the first in settings.sim.cameras is the reference forward view;
    later ones look forward too, with another focal length and mounting offset."""
    sim = settings.sim
    if camera not in sim.cameras:
        raise ValueError(f"unknown camera {camera!r}; settings.sim.cameras is {sim.cameras}")
    k = sim.cameras.index(camera)
    zoom = (1.0, 0.75, 1.3, 0.9)[k % 4]
    return Camera(
        width=sim.width, height=sim.height, focal=extras.focal * sim.width * zoom,
        height_m=extras.camera_height + 0.1 * (k % 2), lateral=(0.0, -0.3, 0.3, 0.0)[k % 4],
        horizon=0.42 * sim.height,
    )  # fmt: skip


_SHIFT = 4  # OpenCV fixed-point bits: coordinates at 1/16 pixel
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA


class Painter:
    """Three layers for one frame: albedo (H, W, 3) uint8, light sources (H, W, 3) uint8, depth (H, W) float32 metres.

    Shapes go to albedo (anti-aliased, sub-pixel); each object also marks its bounding box in
    depth once (`occlude`). Coordinates are plain Python floats: these images are small, and
    numpy's per-call overhead would cost more than the drawing.
    """

    def __init__(self, cam: Camera, curve: float, albedo: np.ndarray, depth: np.ndarray):
        self.cam, self.curve = cam, curve
        self.albedo, self.depth = albedo, depth
        self.light = np.zeros_like(albedo)
        self.limit = 4.0 * max(cam.width, cam.height)

    def _fix(self, u: float, v: float) -> tuple[int, int]:
        """Image coordinates to OpenCV fixed point, clamped far outside the image."""
        lim = self.limit
        return int(min(max(u, -lim), lim) * _ONE + 0.5), int(min(max(v, -lim), lim) * _ONE + 0.5)

    def poly(self, uv, colour, light=None):
        """A filled convex polygon in image coordinates (albedo; light if given)."""
        pts = np.array([self._fix(u, v) for u, v in uv], np.int32)
        cv2.fillConvexPoly(self.albedo, pts, colour, _AA, _SHIFT)
        if light is not None:
            cv2.fillConvexPoly(self.light, pts, light, _AA, _SHIFT)

    def box(self, d, x0, x1, y0, y1, colour, light=None):
        """An upright rectangle facing the camera at distance d: x0..x1 across, y0..y1 up (metres)."""
        p, c = self.cam.project, self.curve
        (ua, va), (ub, vb) = p(d, x0, y0, c), p(d, x1, y1, c)
        self.poly(((ua, va), (ub, va), (ub, vb), (ua, vb)), colour, light)

    def ground(self, d0, d1, x0, x1, colour):
        """A flat patch on the road (lane marking, shadow) from d0 to d1 ahead."""
        p, c = self.cam.project, self.curve
        self.poly((p(d0, x0, 0, c), p(d0, x1, 0, c), p(d1, x1, 0, c), p(d1, x0, 0, c)), colour)

    def disc(self, d, x, y, r, colour, light=None, thickness=-1.0):
        """A disc (or a ring `thickness` metres wide) of radius r metres, upright at distance d."""
        centre = self._fix(*self.cam.project(d, x, y, self.curve))
        radius = max(1, int(self.cam.focal * r / d * _ONE))
        th = -1 if thickness < 0 else max(1, int(self.cam.focal * thickness / d + 0.5))
        cv2.circle(self.albedo, centre, radius, colour, th, _AA, _SHIFT)
        if light is not None:
            cv2.circle(self.light, centre, radius, light, th, _AA, _SHIFT)

    def occlude(self, d, x0, x1, y0, y1):
        """Mark the object's box (metres, grown by the anti-aliased fringe) as d metres away in depth."""
        p, c = self.cam.project, self.curve
        (ua, va), (ub, vb) = p(d, x0, y0, c), p(d, x1, y1, c)
        H, W = self.depth.shape
        c0, c1 = max(0, int(min(ua, ub) - 0.5)), min(W, int(max(ua, ub) + 1.5))
        r0, r1 = max(0, int(min(va, vb) - 0.5)), min(H, int(max(va, vb) + 1.5))
        if c0 < c1 and r0 < r1:
            self.depth[r0:r1, c0:c1] = d


# ---------------------------------------------------------------- drawing things

_TYRE = (22.0, 22.0, 22.0)


def _draw_car(pt: Painter, d, x, look, *, front: bool, lit: bool):
    w, h, body = look["w"], look["h"], look["body"]
    pt.occlude(d, x - w / 2, x + w / 2, 0.0, h)
    pt.ground(d - 0.2, d + 1.5, x - w * 0.6, x + w * 0.6, (25.0, 25.0, 27.0))  # shadow
    pt.box(d, x - w / 2, x + w / 2, 0.0, h, body)
    pt.box(
        d,
        x - w * 0.47,
        x + w * 0.47,
        0.0,
        0.32,
        (0.3 * body[0] + 10, 0.3 * body[1] + 10, 0.3 * body[2] + 10),
    )  # wheels, bumper
    pt.box(d, x - w * 0.42, x + w * 0.42, h * 0.62, h * 0.92, (45.0, 55.0, 65.0))  # window
    if front:  # headlights of an oncoming car
        colour, glow = (230.0, 230.0, 210.0), (255.0, 250.0, 220.0)
    else:
        colour, glow = (190.0, 25.0, 25.0), (255.0 * look["brake"], 20.0, 15.0)
    for s in (-1, 1):
        pt.box(
            d, x + s * w * 0.47, x + s * w * 0.3, 0.45 * h, 0.56 * h, colour, glow if lit else None
        )


def _draw_person(pt: Painter, d, x, look, t):
    h = look["h"]
    pt.occlude(d, x - 0.25, x + 0.25, 0.0, h)
    swing = 0.12 * np.sin(look["phase"] + 7.0 * t)  # gait: leg spread, metres
    pt.box(d, x - 0.12 - swing, x - 0.02 - swing, 0.0, 0.47 * h, look["legs"])
    pt.box(d, x + 0.02 + swing, x + 0.12 + swing, 0.0, 0.47 * h, look["legs"])
    pt.box(d, x - 0.25, x + 0.25, 0.45 * h, 0.84 * h, look["shirt"])
    pt.disc(d, x, 0.92 * h, 0.1 * h, look["skin"])


def _draw_cyclist(pt: Painter, d, x, look, t):
    bike = look["bike"]
    if look["side"]:  # crossing: wheels, frame and rider seen from the side
        pt.occlude(d, x - 0.9, x + 0.9, 0.0, 1.65)
        for s in (-0.55, 0.55):
            pt.disc(d, x + s, 0.34, 0.34, _TYRE, thickness=0.11)
        pt.box(d, x - 0.5, x + 0.5, 0.45, 0.55, bike)
        pt.box(d, x - 0.15, x + 0.05, 0.55, 0.95, bike)
        pt.box(d, x - 0.3, x + 0.05, 0.9, 1.45, look["shirt"])
        pt.disc(d, x + 0.05, 1.56, 0.14, look["helmet"])
    else:  # riding ahead: a thin wheel under a rider
        pt.occlude(d, x - 0.22, x + 0.22, 0.0, 1.65)
        pt.box(d, x - 0.07, x + 0.07, 0.0, 0.68, _TYRE)
        pt.box(d, x - 0.12, x + 0.12, 0.5, 0.95, look["legs"])
        pt.box(d, x - 0.33, x + 0.33, 1.0, 1.07, bike)  # handlebar, wider than the rider
        pt.box(d, x - 0.22, x + 0.22, 0.9, 1.45, look["shirt"])
        pt.disc(d, x, 1.56, 0.14, look["helmet"])
        pt.box(
            d, x - 0.07, x + 0.07, 0.6, 0.7, (190.0, 25.0, 25.0), (200.0, 10.0, 10.0)
        )  # rear reflector


_LAMP = {"red": (255.0, 40.0, 25.0), "amber": (255.0, 170.0, 20.0), "green": (60.0, 255.0, 120.0)}
_LAMP_OFF = {k: tuple(0.2 * c for c in v) for k, v in _LAMP.items()}
_POLE = (70.0, 70.0, 72.0)


def _light_state(look, t) -> str:
    return "green" if look["switch"] is not None and t >= look["switch"] else look["state"]


def _light_top(look) -> float:
    return 4.6 if look["overhead"] else look["pole"]


def _draw_light(pt: Painter, d, x, look, t):
    top = _light_top(look)
    pt.occlude(d, x - 0.28, x + 0.28, top - 1.2, top)
    if look["overhead"]:
        pt.box(d, x - 0.04, x + 3.5, top + 0.05, top + 0.2, _POLE)  # gantry arm
    else:
        pt.box(d, x - 0.06, x + 0.06, 0.0, top, _POLE)
    y0 = top - 1.2  # housing 0.56 x 1.2 m with three 0.4 m lamps (larger than life: small images)
    pt.box(d, x - 0.28, x + 0.28, y0, top, (25.0, 25.0, 25.0))
    state = _light_state(look, t)
    for i, name in enumerate(("green", "amber", "red")):
        on = name == state
        pt.disc(
            d,
            x,
            y0 + 0.2 + 0.4 * i,
            0.22 if on else 0.18,
            _LAMP[name] if on else _LAMP_OFF[name],
            _LAMP[name] if on else None,
        )


def _draw_obstacle(pt: Painter, d, x, look):
    v, w, h, col = look["variant"], look["w"], look["h"], look["colour"]
    p, c = pt.cam.project, pt.curve
    if v == "cones":
        half = (look["n"] - 1) * 0.3
        pt.occlude(d, x - half - 0.18, x + half + 0.18, 0.0, h)
        for i in range(look["n"]):
            cx = x - half + i * 0.6
            pt.poly((p(d, cx - 0.18, 0, c), p(d, cx + 0.18, 0, c), p(d, cx, h, c)), col)
            pt.box(d, cx - 0.08, cx + 0.08, h * 0.45, h * 0.6, (240.0, 240.0, 240.0))
    elif v == "barrier":
        pt.occlude(d, x - w, x + w, 0.0, 0.2 + h * 0.8)
        pt.box(d, x - w, x + w, 0.2, 0.2 + h * 0.8, col)
        for i in range(2):
            pt.box(
                d,
                x - w + (4 * i + 1) * w / 4,
                x - w + (4 * i + 2) * w / 4,
                0.2,
                0.2 + h * 0.8,
                (240.0,) * 3,
            )
        pt.box(d, x - w, x + w, 0.0, 0.2, (40.0,) * 3)
    elif v == "box":
        pt.occlude(d, x - w / 2, x + w / 2, 0.0, h)
        pt.box(d, x - w / 2, x + w / 2, 0.0, h, col)
        pt.box(d, x - w / 2, x + w / 2, h * 0.8, h, tuple(0.7 * k for k in col))
    else:  # rock / debris: a low lump
        pt.occlude(d, x - 0.6 * w, x + 0.6 * w, 0.0, 0.7 * h)
        pt.poly([p(d, x + w * 0.6 * ca, h * 0.7 * sa, c) for ca, sa in _HALF_CIRCLE], col)


_HALF_CIRCLE = [(float(np.cos(a)), float(np.sin(a))) for a in np.linspace(0, np.pi, 7)]


def _draw_tree(pt: Painter, d, x, look):
    h, r = look["h"], look["r"]
    crown = h * 0.6 + r * 0.6
    pt.occlude(d, x - 0.15, x + 0.15, 0.0, h * 0.6)
    pt.occlude(
        d, x - r, x + r, crown - 0.6 * r, crown + 0.6 * r
    )  # a cross of two boxes covers most of the disc
    pt.occlude(d, x - 0.6 * r, x + 0.6 * r, crown - r, crown + r)
    pt.box(d, x - 0.15, x + 0.15, 0.0, h * 0.6, (80.0, 60.0, 40.0))
    pt.disc(d, x, crown, r, look["green"])


def _draw_actor(pt: Painter, a: Actor, t: float):
    d, x = a.at(t)
    if d < 1.0 or d > 120:
        return
    if a.kind in ("vehicle", "parked", "oncoming"):
        _draw_car(pt, d, x, a.look, front=a.kind == "oncoming", lit=a.kind != "parked")
    elif a.kind in ("pedestrian", "walker"):
        _draw_person(pt, d, x, a.look, t)
    elif a.kind == "cyclist":
        _draw_cyclist(pt, d, x, a.look, t)
    elif a.kind in ("red_light", "light"):
        _draw_light(pt, d, x, a.look, t)
    elif a.kind == "obstacle":
        _draw_obstacle(pt, d, x, a.look)
    elif a.kind == "tree":
        _draw_tree(pt, d, x, a.look)


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


# ---------------------------------------------------------------- background and weather


def _background(scene: Scene, cam: Camera, extras: SimExtras) -> tuple[np.ndarray, np.ndarray]:
    """Sky, terrain, buildings and the road surface: (albedo (H, W, 3) uint8, depth (H, W) float32)."""
    H, W, hz = cam.height, cam.width, cam.horizon
    rows = np.arange(H, dtype=np.float32)[:, None] + 0.5
    a = np.clip(rows / max(hz, 1.0), 0, 1)[..., None]  # 0 at the top, 1 at the horizon
    sky = (1 - a) * np.array(scene.sky_top, np.float32) + a * np.array(
        scene.sky_horizon, np.float32
    )
    below = rows[..., None] > hz
    albedo = np.where(below, np.array(scene.ground, np.float32), sky) * np.ones(
        (1, W, 1), np.float32
    )
    albedo = np.ascontiguousarray(albedo.astype(np.uint8))
    ground_d = np.where(rows > hz, cam.focal * cam.height_m / np.maximum(rows - hz, 0.5), SKY_DEPTH)
    depth = np.ascontiguousarray(
        np.broadcast_to(np.minimum(ground_d, SKY_DEPTH), (H, W)).astype(np.float32)
    )
    pt = Painter(cam, scene.curve, albedo, depth)
    for u0, u1, h, col in scene.buildings:
        pt.poly(
            [(u0 * W, hz + 0.5), (u1 * W, hz + 0.5), (u1 * W, hz - h * H), (u0 * W, hz - h * H)],
            col,
        )
        depth[
            max(0, int(hz - h * H - 0.5)) : max(0, int(hz + 1)),
            max(0, int(u0 * W - 0.5)) : max(0, int(u1 * W + 1.5)),
        ] = 150.0
    ds = [float(d) for d in np.geomspace(1.5, 300, 40)]
    p, c = cam.project, scene.curve

    def fixed(uv):
        return np.array([pt._fix(u, v) for u, v in uv], np.int32)

    left = [p(d, -5.3, 0, c) for d in ds]
    right = [p(d, 2.1, 0, c) for d in ds[::-1]]
    cv2.fillPoly(albedo, [fixed(left + right)], scene.asphalt, _AA, _SHIFT)
    for x in (-5.15, 1.95):  # solid edge lines
        quads = [[p(d0, x - 0.07, 0, c), p(d0, x + 0.07, 0, c), p(d1, x + 0.07, 0, c), p(d1, x - 0.07, 0, c)]
                 for d0, d1 in zip(ds[:-1], ds[1:], strict=True)]  # fmt: skip
        cv2.fillPoly(albedo, [fixed(q) for q in quads], (215.0, 215.0, 210.0), _AA, _SHIFT)
    return albedo, depth


@functools.lru_cache(maxsize=16)
def _beam(H: int, W: int, horizon: float) -> np.ndarray:
    """Headlight cone, (H, W) float32 in [0, 1]: wide and bright low in the image, fading above the horizon."""
    u = (np.arange(W, dtype=np.float32) + 0.5 - W / 2) / W
    v = np.arange(H, dtype=np.float32)[:, None] + 0.5
    across = np.exp(-((u / 0.32) ** 2))[None, :]
    up = np.clip((v - (horizon - 0.15 * H)) / (0.2 * H), 0, 1)
    return (across * up).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _vignette(H: int, W: int) -> np.ndarray:
    y = (np.arange(H, dtype=np.float32)[:, None] + 0.5) / H - 0.5
    x = (np.arange(W, dtype=np.float32)[None, :] + 0.5) / W - 0.5
    return np.repeat((1 - 0.7 * (x * x + y * y))[..., None], 3, axis=2).astype(
        np.float32
    )  # (H, W, 3)


def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])


def _weather(
    rng, scene: Scene, albedo: np.ndarray, light: np.ndarray, depth: np.ndarray
) -> np.ndarray:
    """Apply the clip's condition to stacks of layers (N, H, W, 3)/(N, H, W); returns linear RGB float32 0..255.

    Per-pixel factors are expanded to 3 channels before use: numpy broadcasting over a last
    axis of 3 is several times slower than plain elementwise work.
    """
    w, cond = scene.weather, scene.condition
    img = albedo.astype(np.float32)
    lamps = light.astype(np.float32) if light.any() else None
    N, H, W = depth.shape
    if cond == "night":
        lit = w["ambient"] + w["beam"] * _beam(H, W, 0.42 * H)[None] / (
            1 + (depth / w["reach"]) ** 2
        )
        if w["lamps"]:  # street lamps: more ambient light near the road
            lit += 0.12 / (1 + (depth / 25) ** 2)
        lit[depth >= SKY_DEPTH] = 1.0  # the sky colour is already the night sky
        img *= _rgb(lit)
        if lamps is not None:
            img += 1.6 * lamps + 1.3 * _blur(lamps, 1.2)  # lamps glow
    elif cond == "day":
        img *= np.float32(w["gain"])
        if lamps is not None:
            img += 0.6 * lamps + 0.5 * _blur(lamps, 0.8)  # lit lamps glow a little by day too
    elif cond == "rain":
        img *= np.float32(w["gain"] * w["contrast"])
        img += np.float32(w["grey"] * (1 - w["contrast"]))
        if lamps is not None:
            img += 0.5 * w["contrast"] * lamps + 0.6 * _blur(lamps, 1.0)
        img += _rgb(_rain_streaks(rng, N, H, W, w), 0.35)
        img = _blur(img, w["blur"])
        img = _lens_drops(rng, img, w["drops"])
    elif cond == "fog":
        t = np.exp(-w["beta"] * depth)  # transmission through the haze, (N, H, W)
        img *= _rgb(t, w["gain"])
        img += _rgb(1 - t, w["air"])
        if lamps is not None:
            img += 0.8 * lamps * _rgb(np.sqrt(t))
        img = _blur(img, w["blur"])
    return img


def _rgb(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """(..., H, W) -> (..., H, W, 3) float32, times scale."""
    return np.repeat((x * np.float32(scale)).astype(np.float32)[..., None], 3, axis=-1)


def _expose(rng, img: np.ndarray, noise: float) -> np.ndarray:
    """Camera response: vignetting, a little auto-exposure flicker, sensor noise; (N, H, W, 3) float32 -> uint8.

    The noise is a window of a fixed bank of Gaussian noise picked by the clip's rng: drawing
    fresh normals per pixel would cost more than the whole rendering.
    """
    N, H, W, _ = img.shape
    bank, vignette = _noise_bank(H, W), _vignette(H, W)
    pick = rng.integers(0, [len(bank), _NOISE_PAD + 1, _NOISE_PAD + 1], size=(N, 3))
    exposure = rng.uniform(0.96, 1.04, N)
    out = np.empty(img.shape, np.uint8)
    for i, (k, y, x) in enumerate(pick):
        seen = cv2.multiply(img[i], vignette, scale=float(exposure[i]))
        out[i] = cv2.addWeighted(
            seen, 1.0, bank[k, y : y + H, x : x + W], float(noise), 0.0, dtype=cv2.CV_8U
        )
    return out


_NOISE_PAD = 8


@functools.lru_cache(maxsize=4)
def _noise_bank(H: int, W: int) -> np.ndarray:
    """(4, H + pad, W + pad, 3) float32 standard normal noise, the same in every process."""
    return np.random.default_rng(20250106).standard_normal(
        (4, H + _NOISE_PAD, W + _NOISE_PAD, 3), dtype=np.float32
    )


def _rain_streaks(rng, N, H, W, w) -> np.ndarray:
    """(N, H, W) uint8: short slanted bright lines, new ones every frame."""
    out = np.zeros((N, H, W), np.uint8)
    for f in range(N):
        xs, ys = rng.uniform(0, W, w["streaks"]), rng.uniform(0, H, w["streaks"])
        lengths = rng.uniform(0.04, 0.12, w["streaks"]) * H
        for x, y, length in zip(xs, ys, lengths, strict=True):
            p0 = (int(x * _ONE), int(y * _ONE))
            p1 = (int((x + w["wind"] * length) * _ONE), int((y + length) * _ONE))
            cv2.line(out[f], p0, p1, 200, 1, _AA, _SHIFT)
    return out


def _lens_drops(rng, img: np.ndarray, n: int) -> np.ndarray:
    """Water drops that stay on the lens for the clip: strongly blurred, slightly brighter discs."""
    if n == 0:
        return img
    N, H, W, _ = img.shape
    mask = np.zeros((H, W), np.uint8)
    for _ in range(n):
        r = rng.uniform(0.05, 0.14) * W
        cv2.circle(
            mask,
            (int(rng.uniform(0, W) * _ONE), int(rng.uniform(0, H) * _ONE)),
            int(r * _ONE),
            255,
            -1,
            _AA,
            _SHIFT,
        )
    m = _rgb(mask, 1 / 255)[None]
    k = max(3, (W // 12) | 1)
    smeared = np.stack([cv2.blur(f, (k, k)) for f in img]) * np.float32(1.08) + np.float32(6)
    return img * (1 - m) + smeared * m


# ---------------------------------------------------------------- rendering


@dataclass
class Rendering:
    frames: dict[str, list[np.ndarray]]  # camera -> N frames (H, W, 3) uint8 RGB
    labels: list[str]  # per frame, shared by all cameras (what is ahead of the vehicle)
    ahead_m: list[float]  # per frame: distance of the labelled object, inf for clear_road


def render_scene(
    rng: np.random.Generator,
    scene: Scene,
    settings: Settings,
    *,
    cameras: list[str] | None = None,
    extras: SimExtras = EXTRAS,
) -> Rendering:
    """Draw one scene over frames_per_clip frames for `cameras` (default: all of settings.sim.cameras).

    Labels are what is ahead of the vehicle, judged in the first configured camera's view, and
    shared by all cameras.
    """
    sim = settings.sim
    n = sim.frames_per_clip
    times = [i / sim.fps for i in range(n)]
    reference = camera_for(settings, sim.cameras[0], extras=extras)
    labels, ahead_m = [], []
    for t in times:
        label, dist = _label(scene, t, reference, extras)
        labels.append(label)
        ahead_m.append(dist)
    frames = {}
    for name in cameras or sim.cameras:
        cam = camera_for(settings, name, extras=extras)
        bg_albedo, bg_depth = _background(scene, cam, extras)
        albedo = np.empty((n, cam.height, cam.width, 3), np.uint8)
        light = np.empty_like(albedo)
        depth = np.empty((n, cam.height, cam.width), np.float32)
        for i, t in enumerate(times):
            pt = Painter(cam, scene.curve, bg_albedo.copy(), bg_depth.copy())
            _draw_lane_dashes(pt, scene.ego_speed * t)
            for a in sorted(scene.actors, key=lambda a: -a.at(t)[0]):  # far to near
                _draw_actor(pt, a, t)
            albedo[i], light[i], depth[i] = pt.albedo, pt.light, pt.depth
        out = _expose(rng, _weather(rng, scene, albedo, light, depth), scene.weather["noise"])
        frames[name] = list(out)
    return Rendering(frames, labels, ahead_m)


def _draw_lane_dashes(pt: Painter, travelled: float):
    """The dashed centre line, 3 m dashes every 9 m, moving as the car drives (one OpenCV call)."""
    period, length, x0, x1 = 9.0, 3.0, -1.82, -1.68  # metres
    p, c = pt.cam.project, pt.curve
    quads = []
    s = -(travelled % period)
    while s < 60.0:
        if s + length > 1.2:
            d0, d1 = max(s, 1.2), s + length
            uv = (p(d0, x0, 0, c), p(d0, x1, 0, c), p(d1, x1, 0, c), p(d1, x0, 0, c))
            quads.append(np.array([pt._fix(u, v) for u, v in uv], np.int32))
        s += period
    cv2.fillPoly(pt.albedo, quads, (215.0, 215.0, 205.0), _AA, _SHIFT)


def _label(scene: Scene, t: float, cam: Camera, extras: SimExtras) -> tuple[str, float]:
    """The nearest thing ahead at time t and its distance (m); clear_road and inf if none."""
    best = ("clear_road", float("inf"))
    for a in scene.actors:
        d = _ahead(a, t, cam, scene.curve, extras)
        if d is not None and d < best[1]:
            best = (a.kind, d)
    return best


def render_clip(
    rng: np.random.Generator,
    *,
    condition: str,
    settings: Settings,
    clip_index: int,
    camera: str | None = None,
) -> tuple[list[np.ndarray], list[str]]:
    """Frames (H, W, 3) uint8 RGB and per-frame class names of one clip, seen by one camera.

    `camera` defaults to the first of settings.sim.cameras; `clip_index` (the running index of
    the clip) selects the part of the route: the clips of a 4-clip stretch are all in town
    (buildings, more parked cars) or all in the country. For all cameras of one scene, use
    `sample_scene` + `render_scene` (as `simulate` does).
    """
    check_classes(settings.classes)
    scene = _scene_for(rng, condition, clip_index)
    name = camera or settings.sim.cameras[0]
    r = render_scene(rng, scene, settings, cameras=[name])
    return r.frames[name], r.labels


def _scene_for(rng, condition: str, clip_index: int) -> Scene:
    return sample_scene(rng, condition, urban=(clip_index // 4) % 2 == 0)


def render_frames(
    rng: np.random.Generator,
    n: int,
    condition: str,
    settings: Settings,
    *,
    per_clip: int = 4,
    jpeg_quality: int | None = None,
) -> tuple[np.ndarray, list[str]]:
    """`n` frames (n, H, W, 3) uint8 and their labels, from short clips of `per_clip` frames (first camera).

    For tests and benchmarks: no MCAP. With `jpeg_quality`, each frame is JPEG round-tripped
    like the frames of `simulate`.
    """
    if n < 0 or per_clip < 1:
        raise ValueError(
            f"render_frames needs n >= 0 and per_clip >= 1, got n={n}, per_clip={per_clip}"
        )
    check_classes(settings.classes)
    sim = settings.sim.model_copy(update={"frames_per_clip": per_clip})
    short = settings.model_copy(update={"sim": sim})
    frames, labels = [], []
    index = 0
    while len(frames) < n:
        r = render_scene(rng, _scene_for(rng, condition, index), short, cameras=sim.cameras[:1])
        frames += r.frames[sim.cameras[0]]
        labels += r.labels
        index += 1
    out = np.stack(frames[:n]) if n else np.zeros((0, sim.height, sim.width, 3), np.uint8)
    if jpeg_quality is not None:
        out = np.stack([decode_jpeg(encode_jpeg(f, jpeg_quality)) for f in out]) if n else out
    return out, labels[:n]


def encode_jpeg(frame: np.ndarray, quality: int = EXTRAS.jpeg_quality) -> bytes:
    """RGB uint8 (H, W, 3) to JPEG bytes."""
    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError(f"cannot JPEG-encode a frame of shape {frame.shape}")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


# ---------------------------------------------------------------- the fleet


def simulate(
    store: Store,
    settings: Settings,
    *,
    clips: int,
    seed: int = 0,
    upload_filter: UploadFilter | None = None,
    progress: bool = False,
    extras: SimExtras = EXTRAS,
) -> list[str]:
    """Drive the fleet until `clips` clips are uploaded to landing/<vehicle>/<YYYY-MM-DD>/<clip_id>.mcap; returns their keys.

    Every recorded clip gets a trigger: `hard_brake` (likelier the closer something is ahead),
    else the `upload_filter`'s answer (shadow mode, e.g. `low_confidence`), else `random`
    (always without a filter; for `random_upload_share` of the clips with one). Clips
    without a trigger are recorded (they advance the drift and the clock) but not uploaded.
    """
    check_classes(settings.classes)
    if clips < 0 or seed < 0:
        raise ValueError(f"simulate needs clips >= 0 and seed >= 0, got clips={clips}, seed={seed}")
    state = read_state(store)
    recorded = state["recorded"]
    keys: list[str] = []
    with tqdm(total=clips, desc="simulate", unit="clip", disable=not progress) as bar:
        while len(keys) < clips:
            key, data = _record(recorded, seed, settings, upload_filter, extras)
            recorded += 1
            if key is None:
                continue
            store.write_bytes(key, data)
            keys.append(key)
            bar.update()
    # Written last: a crash before this re-records the same clips (same keys, same bytes) next time.
    store.write_json(STATE_KEY, {"recorded": recorded, "uploaded": state["uploaded"] + len(keys)})
    return keys


def _record(index: int, seed: int, settings: Settings, upload_filter, extras: SimExtras):
    """Record clip number `index`: (key, MCAP bytes), or (None, None) when nothing triggers its upload."""
    sim = settings.sim
    rng = np.random.default_rng([seed, index])
    mix = condition_mix(sim, index)
    condition = CONDITIONS[rng.choice(len(CONDITIONS), p=np.array([mix[c] for c in CONDITIONS]))]
    scene = _scene_for(rng, condition, index)
    r = render_scene(rng, scene, settings, extras=extras)
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
    return f"{LANDING}/{vehicle_id}/{start.date().isoformat()}/{meta['clip_id']}.mcap", data


def _clock(rng, index: int, condition: str, extras: SimExtras) -> datetime:
    """When clip `index` was recorded: the day moves every clips_per_day clips; night clips happen at night."""
    day = extras.start_date + timedelta(days=index // extras.clips_per_day)
    hour = (20 + rng.uniform(0, 9)) % 24 if condition == "night" else rng.uniform(7, 19)
    return day + timedelta(seconds=int(hour * 3600))
