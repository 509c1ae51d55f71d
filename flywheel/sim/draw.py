"""The camera and the painter: how the things of a scene are drawn into one frame's layers.

Geometry is drawn with OpenCV at sub-pixel precision into three layers: albedo, light sources
and depth in metres (`Painter`); render.py adds the background and the weather. The painter also
measures the image extent of each object it draws, from which `_box` makes its 2-D box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from flywheel.config import Settings
from flywheel.sim.scene import EXTRAS, Actor, SimExtras, _light_state, _light_top

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
# pixels: how far OpenCV's anti-aliased fills paint beyond a shape's edge, as coverage (measured
# with OpenCV 4.x: 0.63-0.74 for polygons, 0.56-0.81 for discs)
_AA_SPREAD = 0.7
_NOTHING = [math.inf, math.inf, -math.inf, -math.inf]  # the extent (x0, y0, x1, y1) of nothing


class Painter:
    """Three layers for one frame: albedo (H, W, 3) uint8, light sources (H, W, 3) uint8, depth (H, W) float32 metres.

    Shapes go to albedo (anti-aliased, sub-pixel); each object also marks its bounding box in
    depth once (`occlude`), and `extent` grows to hold the part in the frame of every shape of its
    body (not its shadow on the road, nor a light's pole). Coordinates are plain Python floats:
    these images are small, and numpy's per-call overhead would cost more than the drawing.
    """

    def __init__(self, cam: Camera, curve: float, albedo: np.ndarray, depth: np.ndarray):
        self.cam, self.curve = cam, curve
        self.albedo, self.depth = albedo, depth
        self.light = np.zeros_like(albedo)
        self.limit = 4.0 * max(cam.width, cam.height)
        # x0, y0, x1, y1: the part in the frame of what `_draw_actor` is drawing
        self.extent = _NOTHING.copy()

    # `extent` is in box coordinates, pixel i spanning i .. i + 1; OpenCV puts pixel centres on
    # integers, hence the half pixel. Shapes count as painted, anti-aliased: _AA_SPREAD larger.

    def _grow(self, u0: float, v0: float, u1: float, v1: float):
        """Add the part in the frame of a polygon with these bounds (OpenCV coordinates) to `extent`."""
        s0, s1 = 0.5 - _AA_SPREAD, 0.5 + _AA_SPREAD
        self._add(u0 + s0, v0 + s0, u1 + s1, v1 + s1)

    def _grow_disc(self, u: float, v: float, r: float):
        """Add the part in the frame of a disc of radius r centred at (u, v) (pixels, OpenCV coordinates)."""
        x, y, r = u + 0.5, v + 0.5, r + _AA_SPREAD
        dx = max(0.0, -x, x - self.cam.width)  # how far the centre is outside the frame
        dy = max(0.0, -y, y - self.cam.height)
        if dx * dx + dy * dy < r * r:  # a disc cut by the frame edge reaches less far along it
            half_w, half_h = math.sqrt(r * r - dy * dy), math.sqrt(r * r - dx * dx)
            self._add(x - half_w, y - half_h, x + half_w, y + half_h)

    def _add(self, x0: float, y0: float, x1: float, y1: float):
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(self.cam.width, x1), min(self.cam.height, y1)
        if x0 < x1 and y0 < y1:  # some of it is in the frame
            e = self.extent
            e[0], e[1], e[2], e[3] = min(e[0], x0), min(e[1], y0), max(e[2], x1), max(e[3], y1)

    def _fix(self, u: float, v: float) -> tuple[int, int]:
        """Image coordinates to OpenCV fixed point, clamped far outside the image."""
        lim = self.limit
        return int(min(max(u, -lim), lim) * _ONE + 0.5), int(min(max(v, -lim), lim) * _ONE + 0.5)

    def _fill(self, uv, colour, light):
        pts = np.array([self._fix(u, v) for u, v in uv], np.int32)
        cv2.fillConvexPoly(self.albedo, pts, colour, _AA, _SHIFT)
        if light is not None:
            cv2.fillConvexPoly(self.light, pts, light, _AA, _SHIFT)

    def poly(self, uv, colour, light=None):
        """A filled convex polygon in image coordinates (albedo; light if given)."""
        us, vs = [u for u, _ in uv], [v for _, v in uv]
        self._grow(min(us), min(vs), max(us), max(vs))
        self._fill(uv, colour, light)

    def box(self, d, x0, x1, y0, y1, colour, light=None, *, body=True):
        """An upright rectangle facing the camera at distance d: x0..x1 across, y0..y1 up (metres);
        `body`: part of the object's `extent` (not a light's pole)."""
        p, c = self.cam.project, self.curve
        (ua, va), (ub, vb) = p(d, x0, y0, c), p(d, x1, y1, c)
        if body:
            self._grow(min(ua, ub), min(va, vb), max(ua, ub), max(va, vb))
        self._fill(((ua, va), (ub, va), (ub, vb), (ua, vb)), colour, light)

    def ground(self, d0, d1, x0, x1, colour):
        """A flat patch on the road (lane marking, shadow) from d0 to d1 ahead: never part of `extent`."""
        p, c = self.cam.project, self.curve
        uv = (p(d0, x0, 0, c), p(d0, x1, 0, c), p(d1, x1, 0, c), p(d1, x0, 0, c))
        self._fill(uv, colour, None)

    def disc(self, d, x, y, r, colour, light=None, thickness=-1.0):
        """A disc (or a ring `thickness` metres wide) of radius r metres, upright at distance d."""
        u, v = self.cam.project(d, x, y, self.curve)
        centre = self._fix(u, v)
        radius = max(1, int(self.cam.focal * r / d * _ONE))
        th = -1 if thickness < 0 else max(1, int(self.cam.focal * thickness / d + 0.5))
        # a ring's line is centred on the radius
        self._grow_disc(u, v, radius / _ONE + max(th, 0) / 2)
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


def _draw_light(pt: Painter, d, x, look, t):
    top = _light_top(look)
    pt.occlude(d, x - 0.28, x + 0.28, top - 1.2, top)
    if look["overhead"]:  # the box of a light is its housing: pole and gantry are not in it
        pt.box(d, x - 0.04, x + 3.5, top + 0.05, top + 0.2, _POLE, body=False)  # gantry arm
    else:
        pt.box(d, x - 0.06, x + 0.06, 0.0, top, _POLE, body=False)
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


def _draw_actor(pt: Painter, a: Actor, t: float) -> list[float] | None:
    """Draw `a` as it is at time t; returns the extent of its body (`Painter.extent`), None if not drawn."""
    d, x = a.at(t)
    if d < 1.0 or d > 120:
        return None
    pt.extent = _NOTHING.copy()
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
    return pt.extent


def _box(extent: list[float], d: float, depth: np.ndarray) -> tuple[float, ...] | None:
    """The 2-D box (x, y, w, h) in pixels of the frame, x/y the top-left corner, of an object drawn `d`
    metres away with this `extent` (`Painter.extent`): the box of its part in the frame. None where
    that is under a pixel wide or high, or where the object is hidden: no pixel of its box still holds
    its depth mark (`Painter.occlude`), all were marked again by nearer objects.

    Corners are rounded to 1/16 pixel, as OpenCV draws: sums of such numbers are exact, so x + w is
    the right edge exactly, never a rounding error outside the frame.
    """
    if extent[0] > extent[2]:  # nothing of it in the frame
        return None
    x0, y0, x1, y1 = (round(c * _ONE) / _ONE for c in extent)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    if not (depth[int(y0) : math.ceil(y1), int(x0) : math.ceil(x1)] == np.float32(d)).any():
        return None
    return x0, y0, x1 - x0, y1 - y0


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
