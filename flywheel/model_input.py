"""The model's input, made one way everywhere: an encoded image or an RGB frame -> uint8 RGB (3, S, S).

The reader (training and evaluation), shadow mode on the car, the auto-labeler, the label-error
check and the deploy manifest's input spec all come through here, so torch and the deployed ONNX
graph see the same bytes for the same frame. The model normalizes inside (flywheel/model.py): the
input stays raw uint8 pixels, as the fleet has them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

INPUT_NAME = "image"  # the ONNX graph's input
LAYOUT, COLOR, RESIZE = "NCHW", "RGB", "bilinear, stretched to a square"


def input_spec(size: int) -> dict:
    """What the deployed graph takes, for its manifest: name, dtype, shape, layout, colour, value range."""
    return {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", 3, size, size], "layout": LAYOUT,
            "color": COLOR, "range": [0, 255], "resize": RESIZE}  # fmt: skip


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) -> (size, size, 3), bilinear: the model's input geometry everywhere.

    Bilinear, not INTER_AREA: 4x faster at non-integer ratios, and `decode_rgb` first lets libjpeg
    shrink by 2/4/8, so the remaining ratio is under 2 and aliasing stays small.
    """
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)


def decode_rgb(data: bytes, size: int, *, height: int = 0, width: int = 0, where: str = "image") -> np.ndarray:
    """Encoded bytes -> RGB uint8 (H', W', 3); a JPEG far larger than `size` is decoded reduced.

    `height` and `width` (when known, e.g. from the frames table) let libjpeg scale by 1/2, 1/4 or
    1/8 during the IDCT: far less work, and still at least `size` pixels on the short side.
    """
    flag = cv2.IMREAD_COLOR
    shrink = min(height, width) // size if height and width else 1
    if shrink >= 8:
        flag = cv2.IMREAD_REDUCED_COLOR_8
    elif shrink >= 4:
        flag = cv2.IMREAD_REDUCED_COLOR_4
    elif shrink >= 2:
        flag = cv2.IMREAD_REDUCED_COLOR_2
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if bgr is None:
        raise ValueError(f"{where}: image bytes cannot be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_image(data: bytes, size: int, *, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 height: int = 0, width: int = 0, where: str = "image") -> np.ndarray:  # fmt: skip
    """Encoded bytes -> model input uint8 (3, size, size). `transform` (RGB (H, W, 3) -> (size, size, 3))
    replaces the plain resize: the reader's online augmentation resizes first, then augments."""
    out = np.empty((3, size, size), np.uint8)
    decode_into(out, data, size, transform=transform, height=height, width=width, where=where)
    return out


def decode_into(out: np.ndarray, data: bytes, size: int, *, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                height: int = 0, width: int = 0, where: str = "image") -> None:  # fmt: skip
    """`decode_image` written into `out` (uint8 (3, size, size), e.g. one row of a batch): one copy
    from the decoder's (S, S, 3) into the batch's channel-first layout, no intermediate array."""
    rgb = decode_rgb(data, size, height=height, width=width, where=where)
    out[...] = (transform(rgb) if transform is not None else resize_square(rgb, size)).transpose(2, 0, 1)


def decode_images(images: Sequence[bytes], size: int, *, frame_ids: Sequence[str] | None = None,
                  heights: Sequence[int] | None = None, widths: Sequence[int] | None = None) -> np.ndarray:  # fmt: skip
    """Encoded frames -> model input (N, 3, size, size) uint8. Pass the frames' `heights` and `widths`
    (as the frames table and the reader have them) to decode large JPEGs exactly as the reader does."""
    out = np.empty((len(images), 3, size, size), np.uint8)
    for i, data in enumerate(images):
        decode_into(out[i], data, size, height=heights[i] if heights else 0, width=widths[i] if widths else 0,
                    where=frame_ids[i] if frame_ids else f"image {i}")  # fmt: skip
    return out


def frames_to_input(frames: np.ndarray, size: int) -> np.ndarray:
    """RGB frames (N, H, W, 3) uint8 as a camera gives them -> model input (N, 3, size, size) uint8."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be uint8 (N, H, W, 3) RGB, got {getattr(frames, 'dtype', type(frames))} "
                         f"{getattr(frames, 'shape', '')}")  # fmt: skip
    out = np.empty((len(frames), 3, size, size), np.uint8)
    for i, f in enumerate(frames):
        out[i] = resize_square(f, size).transpose(2, 0, 1)
    return out


def check_input(images: np.ndarray, what: str = "images") -> np.ndarray:
    """`images` if it is model input (uint8 (N, 3, S, S)), else ValueError naming what is wrong."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(f"{what} must be a uint8 numpy array, got {type(images).__name__} "
                         f"{getattr(images, 'dtype', '')}")  # fmt: skip
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{what} must have shape (N, 3, S, S), got {images.shape}")
    return images
