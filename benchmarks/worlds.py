"""Worlds of another character than the road simulator's, for the fleet (`sim.simulate(world=...)`).

`digits`: a fleet of cameras reading handwritten digits (scikit-learn's `load_digits`, 1,797 of them)
on tinted cards, light ink on dark or dark on light; ten classes, small frames, nothing of the road scenes.
A clip is one digit seen over the clip's frames with camera shake. The conditions act on the whole
clip: day (as drawn, mild sensor noise), night (dark, strong noise), rain (bright streaks, a slight
blur) and fog (a grey haze over most of the contrast, blurred). The fleet's clips draw from 1,300 of
the digits; the held-out world (`heldout=True`, the benchmark's test set) from the other 497.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from flywheel.config import Settings
from flywheel.sim import ROAD, World
from flywheel.sim.render import Rendering

DIGITS_TRAIN_SOURCES = 1300  # as benchmarks/datasets.py splits them


class DigitsWorld:
    """Handwritten digits under four conditions; see the module docstring."""

    classes = [str(d) for d in range(10)]

    def __init__(self, *, heldout: bool = False):
        self.heldout = heldout
        self._sources: tuple[np.ndarray, np.ndarray] | None = None

    def _digits(self) -> tuple[np.ndarray, np.ndarray]:
        """(ink masks (N, 8, 8) in [0, 1], labels (N,)) of this world's share of the digits."""
        if self._sources is None:
            from sklearn.datasets import load_digits

            digits = load_digits()
            order = np.random.default_rng(4).permutation(len(digits.images))
            keep = order[DIGITS_TRAIN_SOURCES:] if self.heldout else order[:DIGITS_TRAIN_SOURCES]
            self._sources = (digits.images[keep] / 16.0, digits.target[keep])
        return self._sources

    def record(self, rng: np.random.Generator, condition: str, index: int, settings: Settings, *,
               cameras: list[str] | None = None) -> Rendering:  # fmt: skip
        sim = settings.sim
        W, H, n = sim.width, sim.height, sim.frames_per_clip
        inks, labels = self._digits()
        k = int(rng.integers(len(inks)))
        side = max(8, round(0.75 * min(W, H)))
        ink = np.clip(cv2.resize(inks[k], (side, side), interpolation=cv2.INTER_CUBIC), 0, 1)
        # tinted cards, light ink on dark or dark on light: legible in brightness as drawn (the condition may
        # take that away), whatever the colours
        light, dark = rng.uniform(150, 255) * rng.uniform(0.7, 1.0, 3), rng.uniform(0, 90) * rng.uniform(0.5, 1.0, 3)
        paper, pen = (light, dark) if rng.random() < 0.5 else (dark, light)
        x0, y0 = rng.uniform(0, W - side), rng.uniform(0, H - side)
        frames = []
        for _ in range(n):
            canvas = np.zeros((H, W), np.float32)
            dx, dy = np.clip([x0 + rng.normal(0, 1.0), y0 + rng.normal(0, 1.0)], 0, [W - side, H - side]).astype(int)
            canvas[dy : dy + side, dx : dx + side] = ink
            img = paper * (1 - canvas[..., None]) + pen * canvas[..., None]
            frames.append(_condition(rng, img.astype(np.float32), condition))
        label = self.classes[int(labels[k])]
        return Rendering({cam: list(frames) for cam in cameras or sim.cameras}, [label] * n, [math.inf] * n)


def _condition(rng: np.random.Generator, img: np.ndarray, condition: str) -> np.ndarray:
    """One frame (H, W, 3) float in 0-255 as the camera sees it in `condition`: uint8."""
    H, W = img.shape[:2]
    noise = 8.0
    if condition == "night":
        img, noise = img * rng.uniform(0.2, 0.35), 14.0
    elif condition == "rain":
        for _ in range(int(rng.integers(4, 9))):
            x, length = rng.uniform(0, W), rng.uniform(0.3, 0.8) * H
            y = rng.uniform(0, H - length)
            cv2.line(img, (int(x), int(y)), (int(x + 0.2 * length), int(y + length)), (225, 225, 235), 1, cv2.LINE_AA)
        img = cv2.GaussianBlur(img, (3, 3), 0.6)
    elif condition == "fog":
        haze = rng.uniform(0.65, 0.8)
        img = cv2.GaussianBlur(img * (1 - haze) + 200.0 * haze, (5, 5), 1.1)
    elif condition != "day":
        raise ValueError(f"the digits world knows the conditions day, night, rain and fog, not {condition!r}")
    return np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)


WORLDS = ("road", "digits")


def world_for(name: str, *, heldout: bool = False) -> World:
    """A world by name; `heldout`: the share of it the fleet never sees (the road world has none apart:
    its test frames are other random scenes)."""
    if name == "road":
        return ROAD
    if name == "digits":
        return DigitsWorld(heldout=heldout)
    raise ValueError(f"unknown world {name!r}; known: {list(WORLDS)}")
