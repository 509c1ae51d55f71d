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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from flywheel import sim
from flywheel.config import DEFAULT_CLASSES, Settings, SimSettings
from flywheel.sim.render import encode_jpeg

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
}  # fmt: skip
