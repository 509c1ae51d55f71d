"""Rendering and weather: clips of frames from a scene, and the JPEG round trip.

Each frame is drawn into layers (albedo, light sources, depth in metres; see draw.py) over a
background of sky, terrain, buildings and road; the weather then acts on whole clips at once
with numpy: day (exposure), night (headlight cone with distance falloff, glowing lamps, strong
sensor noise), rain (low contrast, streaks, blur, drops on the lens), fog (haze that grows with
depth). So the day task is learnable and the night/fog tasks are hard.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from flywheel.config import DEFAULT_CLASSES, Settings
from flywheel.sim.draw import (
    _AA,
    _ONE,
    _SHIFT,
    Camera,
    Painter,
    _box,
    _draw_actor,
    _draw_lane_dashes,
    camera_for,
)
from flywheel.sim.scene import (
    EXTRAS,
    Scene,
    SimExtras,
    _box_class,
    _label,
    _scene_for,
    check_classes,
)

SKY_DEPTH = 1000.0  # metres; "infinitely far" in the depth layer


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
    # camera -> per frame, the objects in view: {"label", "x", "y", "w", "h" (pixels, x/y the top-left
    # corner), "track_id"}; None: the world reports no boxes
    boxes: dict[str, list[list[dict]]] | None = None


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
    shared by all cameras. Boxes are per camera: every thing of a class in view (`_box_class`,
    scenery included) that is not hidden behind nearer things (`_box`); its track_id is its index
    in scene.actors.
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
    frames, boxes = {}, {}
    for name in cameras or sim.cameras:
        cam = camera_for(settings, name, extras=extras)
        bg_albedo, bg_depth = _background(scene, cam, extras)
        albedo = np.empty((n, cam.height, cam.width, 3), np.uint8)
        light = np.empty_like(albedo)
        depth = np.empty((n, cam.height, cam.width), np.float32)
        boxes[name] = []
        for i, t in enumerate(times):
            pt = Painter(cam, scene.curve, bg_albedo.copy(), bg_depth.copy())
            _draw_lane_dashes(pt, scene.ego_speed * t)
            drawn = []  # (track, class, distance, extent) of the things with a class
            far_to_near = sorted(enumerate(scene.actors), key=lambda ka: -ka[1].at(t)[0])
            for k, a in far_to_near:
                extent = _draw_actor(pt, a, t)
                if extent is not None and (cls := _box_class(a, t)) is not None:
                    drawn.append((str(k), cls, a.at(t)[0], extent))
            albedo[i], light[i], depth[i] = pt.albedo, pt.light, pt.depth
            boxes[name].append(_frame_boxes(drawn, pt.depth))
        out = _expose(rng, _weather(rng, scene, albedo, light, depth), scene.weather["noise"])
        frames[name] = list(out)
    return Rendering(frames, labels, ahead_m, boxes)


def _frame_boxes(drawn: list[tuple[str, str, float, list[float]]], depth: np.ndarray) -> list[dict]:
    """The boxes of one frame, nearest last, from what was drawn into it and its final depth layer."""
    out = []
    for track, cls, d, extent in drawn:
        if (box := _box(extent, d, depth)) is not None:
            x, y, w, h = box
            out.append({"label": cls, "x": x, "y": y, "w": w, "h": h, "track_id": track})
    return out


class World(Protocol):
    """What a simulated fleet sees: the `classes` its frames are labelled with, and one clip recorded
    in a condition. `RoadWorld` is the built-in one; a benchmark can bring a world of another character
    (benchmarks/worlds.py) and the fleet, shadow mode and labeling team work on it unchanged."""

    classes: list[str]

    def record(self, rng: np.random.Generator, condition: str, index: int, settings: Settings, *,
               cameras: list[str] | None = None) -> Rendering:  # fmt: skip
        """Clip number `index` (the fleet's running count) in `condition`: frames_per_clip frames for
        `cameras` (default: all of settings.sim.cameras) at settings.sim.width x height, a label per frame,
        per frame the distance of what is ahead (inf: nothing; drives the fleet's hard-brake trigger) and,
        optionally, per camera and frame the 2-D boxes of the objects in view (`Rendering.boxes`)."""
        ...


class RoadWorld:
    """The built-in forward-camera road scenes (scene.py, draw.py, this module)."""

    classes = DEFAULT_CLASSES

    def __init__(self, extras: SimExtras = EXTRAS):
        self.extras = extras

    def record(self, rng: np.random.Generator, condition: str, index: int, settings: Settings, *,
               cameras: list[str] | None = None) -> Rendering:  # fmt: skip
        return render_scene(rng, _scene_for(rng, condition, index), settings, cameras=cameras, extras=self.extras)


ROAD = RoadWorld()


def check_world_classes(world: World, classes: list[str]) -> None:
    """Raise ValueError unless `classes` are exactly the world's classes (any order)."""
    if world is ROAD or isinstance(world, RoadWorld):
        check_classes(classes)  # its messages name the renderer
        return
    unknown = [c for c in classes if c not in world.classes]
    missing = [c for c in world.classes if c not in classes]
    if unknown or missing:
        raise ValueError(f"settings.classes must be the world's classes {list(world.classes)}: "
                         f"{unknown or 'none'} unknown to it, {missing or 'none'} missing")  # fmt: skip


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


def render_frames(
    rng: np.random.Generator,
    n: int,
    condition: str,
    settings: Settings,
    *,
    per_clip: int = 4,
    jpeg_quality: int | None = None,
    world: World = ROAD,
) -> tuple[np.ndarray, list[str]]:
    """`n` frames (n, H, W, 3) uint8 and their labels, from short clips of `per_clip` frames (first camera)
    of `world`.

    For tests and benchmarks: no MCAP. With `jpeg_quality`, each frame is JPEG round-tripped
    like the frames of `simulate`.
    """
    if n < 0 or per_clip < 1:
        raise ValueError(
            f"render_frames needs n >= 0 and per_clip >= 1, got n={n}, per_clip={per_clip}"
        )
    check_world_classes(world, settings.classes)
    sim = settings.sim.model_copy(update={"frames_per_clip": per_clip})
    short = settings.model_copy(update={"sim": sim})
    frames, labels = [], []
    index = 0
    while len(frames) < n:
        r = world.record(rng, condition, index, short, cameras=sim.cameras[:1])
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
