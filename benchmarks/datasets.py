"""Seeded datasets of different character for the recipe benchmark (benchmarks/recipe.py).

Each dataset is a stream of clips (groups of frames that share a `clip_id`); a split by clip keeps
every frame of a clip on one side. `make_frames(name, frames=n, seed=s)` returns whole clips
until at least `n` frames, and a prefix of the stream for any `n`: the 1k frames are the first
clips of the 3k ones, as a flywheel's first batch is part of its later dataset. Held-out frames
(`heldout=True`) come from a disjoint stream (other seeds, other sources, `heldout-` clip ids).

    sim       the built-in simulator, its 6 classes, 96x72 JPEG frames, model input 64
    sim96     the simulator with 4 merged classes at 10/25/25/40 %, 128x96 frames, input 96
    geometry  where a coloured shape is (left/right) and how big (near/far): flips, scale and
              translation change the answer; 64x64 PNG
    digits    scikit-learn's `load_digits` (8x8, 10 classes), upscaled to 32x32 RGB, tinted; a
              clip is one handwritten digit seen 3 times (shift, colours, noise)
    glyphs    26 classes: the letters A-Z drawn with OpenCV's 8 Hershey fonts (italic or not, stroke
              width, size, rotation, position, ink and paper colours, a stray stroke, noise), 32x32
              PNG; a clip is one glyph in one style seen 3 times (small jitter between views)
    headway   the simulator's roads (scenery, other cars, day/night/rain/fog) with a lead vehicle in
              the ego lane; the class is how far ahead it is (none/far/mid/near), so where it sits
              (its row, its size) is the answer, not its colour; flips keep the label, a vertical
              shift does not; clips of 8 frames drift in distance; 128x96 JPEG, model input 96
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import cv2
import numpy as np

from flywheel import sim
from flywheel.config import DEFAULT_CLASSES, Settings, SimSettings
from flywheel.sim.draw import Camera
from flywheel.sim.render import encode_jpeg
from flywheel.sim.scene import Actor, Scene, _car_look

FRAMES_PER_CLIP = 8


@dataclass(frozen=True)
class Frames:
    """Frames of one dataset, one entry per frame in every list; images encoded (JPEG or PNG)."""

    dataset: str
    classes: list[str]
    images: list[bytes]
    labels: list[int]  # class index
    clips: list[str]  # clip_id: the group a split keeps together
    conditions: list[str]  # "" where the dataset has none
    height: int
    width: int
    format: str  # jpeg | png

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int) -> Frames:
        """The first whole clips that hold at least `n` frames (all frames if there are fewer)."""
        end = min(n, len(self))
        while 0 < end < len(self) and self.clips[end] == self.clips[end - 1]:
            end += 1
        return Frames(self.dataset, self.classes, self.images[:end], self.labels[:end],
                      self.clips[:end], self.conditions[:end], self.height, self.width,
                      self.format)  # fmt: skip

    def skip(self, n: int) -> Frames:
        """The frames after the first `n` (n at a clip boundary, e.g. `len(take(k))`)."""
        return Frames(self.dataset, self.classes, self.images[n:], self.labels[n:],
                      self.clips[n:], self.conditions[n:], self.height, self.width,
                      self.format)  # fmt: skip


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: list[str]
    image_size: int  # the model input side the dataset is trained at
    make: Callable[..., Frames]  # (n, seed, heldout) -> Frames
    about: str


def make_frames(name: str, *, frames: int, seed: int = 0, heldout: bool = False) -> Frames:
    """At least `frames` frames (whole clips) of dataset `name`; `heldout`: a disjoint stream."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return DATASETS[name].make(frames, seed, heldout)


# ----------------------------------------------------------------------------- sim, sim96

# Halfway through the demo's drift: day 60 %, night 16 %, rain 13 %, fog 11 %.
SIM_MIX = sim.condition_mix(SimSettings(), SimSettings().drift_clips // 2)
SIM96_GROUPS = {  # merged class -> the simulator's classes in it
    "vehicle": ["vehicle"],
    "clear": ["clear_road"],
    "stop": ["red_light", "obstacle"],
    "vru": ["pedestrian", "cyclist"],
}
SIM96_SHARES = {"vehicle": 0.10, "clear": 0.25, "stop": 0.25, "vru": 0.40}  # of the frames


def _sim_settings(width: int, height: int) -> Settings:
    return Settings.model_validate({"sim": {"width": width, "height": height,
                                            "frames_per_clip": FRAMES_PER_CLIP}})  # fmt: skip


def _sim_clips(rng: np.random.Generator, settings: Settings, start: int):
    """Endless (condition, frames, class names) of simulated clips; stretches of 4 clips are town
    or country, as the fleet drives them."""
    conds = list(SIM_MIX)
    p = np.array([SIM_MIX[c] for c in conds])
    index = start
    while True:
        cond = conds[rng.choice(len(conds), p=p / p.sum())]
        scene = sim.sample_scene(rng, cond, urban=(index // 4) % 2 == 0)
        r = sim.render_scene(rng, scene, settings)
        yield cond, r.frames[settings.sim.cameras[0]], r.labels
        index += 1


def _make_sim(n: int, seed: int, heldout: bool) -> Frames:
    settings = _sim_settings(96, 72)
    rng = np.random.default_rng([seed, 1, int(heldout)])
    prefix = "heldout-" if heldout else ""
    out = _Collector("sim", DEFAULT_CLASSES, 72, 96, "jpeg")
    for k, (cond, frames, names) in enumerate(_sim_clips(rng, settings, start=10**6 * heldout)):
        for f, name in zip(frames, names, strict=True):
            out.add(encode_jpeg(f), DEFAULT_CLASSES.index(name), f"{prefix}sim-{k:05d}", cond)
        if len(out) >= n:
            return out.frames()
    raise AssertionError("unreachable")


def _make_sim96(n: int, seed: int, heldout: bool) -> Frames:
    settings = _sim_settings(128, 96)
    classes = list(SIM96_GROUPS)
    to_merged = {c: m for m, members in SIM96_GROUPS.items() for c in members}
    rng = np.random.default_rng([seed, 2, int(heldout)])
    prefix = "heldout-" if heldout else ""
    out = _Collector("sim96", classes, 96, 128, "jpeg")
    kept: Counter = Counter()
    for k, (cond, frames, names) in enumerate(_sim_clips(rng, settings, start=10**6 * heldout)):
        for f, name in zip(frames, names, strict=True):
            m = to_merged[name]
            # Keep a frame while its class is below its share of the frames kept so far (+1): a
            # class the simulator renders more often than its share is thinned, so the shares hold
            # in every prefix of the stream, whichever class is rarest in the simulator.
            if kept[m] < SIM96_SHARES[m] * (len(out) + 1) + 1:
                kept[m] += 1
                out.add(encode_jpeg(f), classes.index(m), f"{prefix}sim96-{k:05d}", cond)
        if len(out) >= n:
            return out.frames()
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- geometry

GEOMETRY_SIZE = 64
GEOMETRY_CLASSES = ["left_far", "left_near", "right_far", "right_near"]
NEAR_RADIUS = 9.0  # px: a shape at least this big is near


def geometry_label(cx: float, radius: float, width: int = GEOMETRY_SIZE) -> int:
    """The class of a shape centred at x = `cx` with half-size `radius`: side x distance."""
    side = "left" if cx < width / 2 else "right"
    return GEOMETRY_CLASSES.index(f"{side}_{'near' if radius >= NEAR_RADIUS else 'far'}")


def geometry_frame(rng: np.random.Generator, *, cx: float, cy: float, radius: float, shape: int,
                   hue: int, background: np.ndarray) -> np.ndarray:  # fmt: skip
    """RGB uint8 (S, S, 3): a saturated shape (0 disc, 1 square, 2 triangle) over a grey background
    with noise and two grey distractors; only the shape is coloured."""
    img = background.copy()
    for _ in range(2):  # grey distractors: position alone must not give the answer away
        x, y = rng.uniform(4, GEOMETRY_SIZE - 4, 2)
        grey = (int(rng.integers(40, 220)),) * 3
        cv2.circle(img, (int(x), int(y)), int(rng.integers(2, 6)), grey, -1)
    colour = cv2.cvtColor(np.uint8([[[hue, 230, 230]]]), cv2.COLOR_HSV2RGB)[0, 0].tolist()
    c, r = (int(round(cx)), int(round(cy))), int(round(radius))
    if shape == 0:
        cv2.circle(img, c, r, colour, -1, cv2.LINE_AA)
    elif shape == 1:
        cv2.rectangle(img, (c[0] - r, c[1] - r), (c[0] + r, c[1] + r), colour, -1)
    else:
        pts = np.array([(c[0], c[1] - r), (c[0] - r, c[1] + r), (c[0] + r, c[1] + r)], np.int32)
        cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def _geometry_background(rng: np.random.Generator) -> np.ndarray:
    top, bottom = rng.uniform(60, 200, 2)
    column = np.linspace(top, bottom, GEOMETRY_SIZE, dtype=np.float32)[:, None, None]
    return np.broadcast_to(column, (GEOMETRY_SIZE, GEOMETRY_SIZE, 3)).astype(np.uint8).copy()


def _make_geometry(n: int, seed: int, heldout: bool) -> Frames:
    rng = np.random.default_rng([seed, 3, int(heldout)])
    prefix = "heldout-" if heldout else ""
    out = _Collector("geometry", GEOMETRY_CLASSES, GEOMETRY_SIZE, GEOMETRY_SIZE, "png")
    k = 0
    while len(out) < n:  # a clip: one shape drifting sideways and growing or shrinking
        radius = rng.uniform(4, 15)
        cx, cy = rng.uniform(radius, GEOMETRY_SIZE - radius, 2)
        vx, grow = rng.uniform(-2.5, 2.5), np.exp(rng.uniform(-0.06, 0.06))
        shape, hue, bg = int(rng.integers(3)), int(rng.integers(180)), _geometry_background(rng)
        for _ in range(FRAMES_PER_CLIP):
            radius = float(np.clip(radius * grow, 4, 15))
            cx = float(np.clip(cx + vx, radius, GEOMETRY_SIZE - radius))
            img = geometry_frame(rng, cx=cx, cy=cy, radius=radius, shape=shape, hue=hue,
                                 background=bg)  # fmt: skip
            out.add(_png(img), geometry_label(cx, radius), f"{prefix}geometry-{k:05d}", "")
        k += 1
    return out.frames()


def shape_centre_x(rgb: np.ndarray) -> float:
    """x of the centroid of the coloured pixels of a geometry frame (the shape is drawn at
    saturation and value 230; no grey pixel, noise and all, is both bright and saturated)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    ys, xs = np.nonzero((hsv[..., 1] > 128) & (hsv[..., 2] > 150))
    if len(xs) == 0:
        raise ValueError("no coloured shape in the frame")
    return float(xs.mean()) + 0.5


# ----------------------------------------------------------------------------- digits

DIGITS_SIZE = 32
DIGITS_VIEWS = 3  # frames per clip: the same handwritten digit seen again
DIGITS_TRAIN_SOURCES = 1300  # of the 1,797 digits; the other 497 are held out


def _make_digits(n: int, seed: int, heldout: bool) -> Frames:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng([seed, 4]).permutation(len(digits.images))
    sources = order[DIGITS_TRAIN_SOURCES:] if heldout else order[:DIGITS_TRAIN_SOURCES]
    if n > len(sources) * DIGITS_VIEWS:
        kind = "held-out" if heldout else "train"
        raise ValueError(f"digits has {len(sources) * DIGITS_VIEWS} {kind} frames, {n} asked for")
    rng = np.random.default_rng([seed, 5, int(heldout)])
    prefix = "heldout-" if heldout else ""
    out = _Collector("digits", [str(d) for d in range(10)], DIGITS_SIZE, DIGITS_SIZE, "png")
    for s in sources:
        ink = cv2.resize(digits.images[s] / 16.0, (24, 24), interpolation=cv2.INTER_CUBIC)
        for _ in range(DIGITS_VIEWS):
            paper, pen = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            while np.abs(paper - pen).sum() < 200:  # keep the digit legible
                pen = rng.uniform(0, 255, 3)
            canvas = np.zeros((DIGITS_SIZE, DIGITS_SIZE), np.float32)
            dx, dy = rng.integers(2, 7, 2)  # 4 px margin +- 2
            canvas[dy : dy + 24, dx : dx + 24] = np.clip(ink, 0, 1)
            img = paper * (1 - canvas[..., None]) + pen * canvas[..., None]
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            out.add(_png(img), int(digits.target[s]), f"{prefix}digits-{s:04d}", "")
        if len(out) >= n:
            break
    return out.frames()


# ----------------------------------------------------------------------------- glyphs

GLYPHS_SIZE = 32
GLYPHS_CLASSES = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
GLYPHS_VIEWS = 3  # frames per clip: the same glyph, in the same style, seen again
GLYPHS_FONTS = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
                cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL,
                cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_COMPLEX]  # fmt: skip
_GLYPH_HI = 4 * GLYPHS_SIZE  # glyphs are drawn and warped at 4x, then shrunk: smooth strokes


def _glyph_ink(letter: str, font: int, thickness: float, italic: bool) -> np.ndarray:
    """uint8 mask of `letter`, cropped to its ink: cap height about 88 px, strokes `thickness`
    (in 1/32 of the frame side once the glyph is scaled to the frame)."""
    scale = 88.0 / cv2.getTextSize("H", font, 1.0, 1)[0][1]
    face = font | (cv2.FONT_ITALIC if italic else 0)
    canvas = np.zeros((220, 220), np.uint8)
    # The cap height ends up about 0.6 of the frame (0.6 * 128 px at 4x): strokes scale with it.
    px = max(1, int(round(thickness * 4 * 88 / (0.6 * _GLYPH_HI))))
    cv2.putText(canvas, letter, (50, 150), face, scale, 255, px, cv2.LINE_AA)
    x, y, w, h = cv2.boundingRect(canvas)
    return canvas[y : y + h, x : x + w]


def glyph_frame(rng: np.random.Generator, ink_mask: np.ndarray, *, height: float, angle: float,
                shift: tuple[float, float], ink: np.ndarray, paper: np.ndarray,
                stroke: bool) -> np.ndarray:  # fmt: skip
    """RGB uint8 (32, 32, 3): the glyph `ink_mask` (from `_glyph_ink`) scaled to `height` of the
    frame, rotated by `angle` degrees and moved by `shift` (px of the 32 px frame) from the
    centre, in `ink` on `paper` (with a gradient), an optional stray stroke, Gaussian noise."""
    h, w = ink_mask.shape
    s = height * _GLYPH_HI / h
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, s)
    m[:, 2] += (_GLYPH_HI / 2 + 4 * shift[0] - w / 2, _GLYPH_HI / 2 + 4 * shift[1] - h / 2)
    big = cv2.warpAffine(ink_mask, m, (_GLYPH_HI, _GLYPH_HI), flags=cv2.INTER_LINEAR)
    if stroke:  # a stray pen stroke, fainter than the glyph
        p0, p1 = rng.uniform(0, _GLYPH_HI, (2, 2)).astype(int)
        cv2.line(big, tuple(map(int, p0)), tuple(map(int, p1)), int(rng.integers(70, 150)),
                 int(rng.integers(3, 7)), cv2.LINE_AA)  # fmt: skip
    a = cv2.resize(big, (GLYPHS_SIZE, GLYPHS_SIZE), interpolation=cv2.INTER_AREA)[..., None] / 255.0
    ramp = np.linspace(-1, 1, GLYPHS_SIZE, dtype=np.float32)
    tilt = rng.uniform(-20, 20, 2)
    grad = (tilt[0] * ramp[None, :] + tilt[1] * ramp[:, None])[..., None]
    img = (paper + grad) * (1 - a) + ink * a
    img = img + rng.normal(0, rng.uniform(5, 14), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _make_glyphs(n: int, seed: int, heldout: bool) -> Frames:
    rng = np.random.default_rng([seed, 6, int(heldout)])
    prefix = "heldout-" if heldout else ""
    out = _Collector("glyphs", GLYPHS_CLASSES, GLYPHS_SIZE, GLYPHS_SIZE, "png")
    k, order = 0, []
    while len(out) < n:
        if not order:  # every letter once per 26 clips: balanced in every prefix of the stream
            order = list(rng.permutation(len(GLYPHS_CLASSES)))
        label = int(order.pop())
        font = GLYPHS_FONTS[int(rng.integers(len(GLYPHS_FONTS)))]
        mask = _glyph_ink(GLYPHS_CLASSES[label], font, rng.uniform(0.7, 2.4), rng.random() < 0.3)
        height, angle = rng.uniform(0.45, 0.75), rng.uniform(-15, 15)
        centre = rng.uniform(-3, 3, 2)
        paper, ink = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        while np.abs(paper - ink).sum() < 160:  # keep the glyph legible
            ink = rng.uniform(0, 255, 3)
        stroke = rng.random() < 0.4
        for _ in range(GLYPHS_VIEWS):
            img = glyph_frame(rng, mask, height=height * rng.uniform(0.93, 1.07),
                              angle=angle + rng.uniform(-4, 4),
                              shift=tuple(centre + rng.uniform(-1.5, 1.5, 2)),
                              ink=ink + rng.uniform(-12, 12, 3), paper=paper + rng.uniform(-12, 12, 3),
                              stroke=stroke)  # fmt: skip
            out.add(_png(img), label, f"{prefix}glyphs-{k:05d}", "")
        k += 1
    return out.frames()


# ----------------------------------------------------------------------------- headway

HEADWAY_CLASSES = ["none", "far", "mid", "near"]
HEADWAY_WIDTH, HEADWAY_HEIGHT = 128, 96
# A lead vehicle nearer than these (metres; rear bumper) is near / mid / far; farther or no lead
# vehicle in the ego lane: none. In the 128x96 frame its road contact row is >= 62 px (near),
# 52-62 px (mid), 46-52 px (far), the horizon at 40 px; its width 28-60, 15-28, 7-15 px.
HEADWAY_LIMITS = {"near": 9.0, "mid": 17.0, "far": 35.0}
# Mid-clip distance drawn for a clip of each class; a clip drifts by up to 8 % either way.
HEADWAY_BANDS = {"near": (5.0, 9.0), "mid": (9.0, 17.0), "far": (17.0, 35.0), "none": (40.0, 70.0)}
HEADWAY_FAR_LEAD = 0.35  # share of the none clips with a lead vehicle beyond the far limit
HEADWAY_FOG = 0.4  # the simulator's fog hides things 20 m away; thinner haze here (beta x 0.4)
_MID_CLIP = 0.7  # s: half a clip (8 frames at 5 fps); distances are drawn for this instant


def headway_label(distance: float) -> int:
    """The class of a frame whose lead vehicle is `distance` m ahead (inf: none in the lane)."""
    for name in ("near", "mid", "far"):
        if distance < HEADWAY_LIMITS[name]:
            return HEADWAY_CLASSES.index(name)
    return HEADWAY_CLASSES.index("none")


@functools.cache
def headway_camera() -> Camera:
    """The simulator's forward camera for the 128x96 headway frames."""
    settings = _sim_settings(HEADWAY_WIDTH, HEADWAY_HEIGHT)
    return sim.camera_for(settings, settings.sim.cameras[0])


def headway_row(distance: float) -> float:
    """Image row (px from the top of the 96 px frame) where a vehicle `distance` m ahead meets
    the road: the nearer, the lower."""
    cam = headway_camera()
    return cam.horizon + cam.focal * cam.height_m / distance


def headway_label_at_row(row: float) -> int:
    """The class of a frame whose lead vehicle meets the road at image row `row` (inverse of
    `headway_row`; at or above the horizon: none)."""
    cam = headway_camera()
    if row <= cam.horizon:
        return HEADWAY_CLASSES.index("none")
    return headway_label(cam.focal * cam.height_m / (row - cam.horizon))


@dataclass(frozen=True)
class HeadwayClip:
    condition: str
    scene: Scene  # the lead vehicle, if any, is one of scene.actors
    lead: Actor | None
    seed: int  # of the rendering (sensor noise, rain)


def headway_clips(seed: int, heldout: bool = False) -> Iterator[HeadwayClip]:
    """The endless stream of headway clips: the simulator's scenes without their labelled actors,
    a car in the next lane half of the time, and a lead vehicle in the ego lane whose mid-clip
    distance is drawn within the band of the clip's class (classes in shuffled blocks of 4)."""
    rng = np.random.default_rng([seed, 7, int(heldout)])
    conds = list(SIM_MIX)
    p = np.array([SIM_MIX[c] for c in conds])
    k, order = 0, []
    while True:
        if not order:
            order = list(rng.permutation(len(HEADWAY_CLASSES)))
        target = HEADWAY_CLASSES[int(order.pop())]
        cond = conds[rng.choice(len(conds), p=p / p.sum())]
        scene = sim.sample_scene(rng, cond, urban=(k // 4) % 2 == 0)
        # Scenery only (trees, parked and oncoming cars, walkers, green lights): no labelled actor.
        actors = [a for a in scene.actors if a.kind not in DEFAULT_CLASSES]
        weather = dict(scene.weather)
        if cond == "fog":
            weather["beta"] *= HEADWAY_FOG
        if rng.random() < 0.5:  # a car in the next lane, going our way: near or far, no label
            actors.append(Actor("vehicle", rng.uniform(5, 45), -3.5 + rng.uniform(-0.3, 0.3),
                                vd=rng.uniform(-2, 2), look=_car_look(rng)))  # fmt: skip
        lead = None
        if target != "none" or rng.random() < HEADWAY_FAR_LEAD:
            d = rng.uniform(*HEADWAY_BANDS[target])
            vd = d * rng.uniform(-0.12, 0.12)  # m/s: up to 8 % of d over the clip, either way
            lead = Actor("vehicle", d - _MID_CLIP * vd, rng.uniform(-0.4, 0.4), vd=vd,
                         vx=rng.uniform(-0.15, 0.15), look=_car_look(rng))  # fmt: skip
            actors.append(lead)
        yield HeadwayClip(cond, replace(scene, actors=actors, weather=weather), lead,
                          int(rng.integers(2**31)))  # fmt: skip
        k += 1


def render_headway(clip: HeadwayClip, *, lead: bool = True) -> tuple[list[np.ndarray], list[float]]:
    """The clip's frames (RGB uint8, 96x128) and the lead vehicle's distance in each (inf: none);
    `lead=False`: the same frames, noise and all, without the lead vehicle."""
    settings = _sim_settings(HEADWAY_WIDTH, HEADWAY_HEIGHT)
    scene = clip.scene
    if not lead:
        scene = replace(scene, actors=[a for a in scene.actors if a is not clip.lead])
    camera = settings.sim.cameras[0]
    r = sim.render_scene(np.random.default_rng(clip.seed), scene, settings, cameras=[camera])
    times = [i / settings.sim.fps for i in range(settings.sim.frames_per_clip)]
    has = lead and clip.lead is not None
    return r.frames[camera], [clip.lead.at(t)[0] if has else float("inf") for t in times]


def _make_headway(n: int, seed: int, heldout: bool) -> Frames:
    prefix = "heldout-" if heldout else ""
    out = _Collector("headway", HEADWAY_CLASSES, HEADWAY_HEIGHT, HEADWAY_WIDTH, "jpeg")
    for k, clip in enumerate(headway_clips(seed, heldout)):
        frames, distances = render_headway(clip)
        for f, d in zip(frames, distances, strict=True):
            out.add(encode_jpeg(f), headway_label(d), f"{prefix}headway-{k:05d}", clip.condition)
        if len(out) >= n:
            return out.frames()
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- helpers


class _Collector:
    def __init__(self, dataset: str, classes: list[str], height: int, width: int, fmt: str):
        self.dataset, self.classes, self.format = dataset, classes, fmt
        self.height, self.width = height, width
        self.images, self.labels, self.clips, self.conditions = [], [], [], []

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, image: bytes, label: int, clip: str, condition: str) -> None:
        self.images.append(image)
        self.labels.append(label)
        self.clips.append(clip)
        self.conditions.append(condition)

    def frames(self) -> Frames:
        return Frames(self.dataset, self.classes, self.images, self.labels, self.clips,
                      self.conditions, self.height, self.width, self.format)  # fmt: skip


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError(f"cannot PNG-encode a frame of shape {rgb.shape}")
    return buf.tobytes()


DATASETS: dict[str, DatasetSpec] = {
    "sim": DatasetSpec("sim", DEFAULT_CLASSES, 64, _make_sim,
                       "built-in simulator, 6 classes, 96x72 -> 64 px"),
    "sim96": DatasetSpec("sim96", list(SIM96_GROUPS), 96, _make_sim96,
                         "simulator, 4 merged classes at 10/25/25/40 %, 128x96 -> 96 px"),
    "geometry": DatasetSpec("geometry", GEOMETRY_CLASSES, 64, _make_geometry,
                            "side (left/right) x size (near/far) of a coloured shape, 64 px"),
    "digits": DatasetSpec("digits", [str(d) for d in range(10)], 32, _make_digits,
                          "sklearn load_digits 8x8 -> 32 px RGB, 3 views per digit"),
    "glyphs": DatasetSpec("glyphs", GLYPHS_CLASSES, GLYPHS_SIZE, _make_glyphs,
                          "26 letters A-Z in 8 Hershey fonts, styles and colours, 32 px, 3 views"),
    "headway": DatasetSpec("headway", HEADWAY_CLASSES, 96, _make_headway,
                           "simulator roads, lead vehicle none/far/mid/near by distance, 128x96 -> 96 px"),
}  # fmt: skip
