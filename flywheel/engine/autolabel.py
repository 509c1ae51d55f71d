"""Auto-labels from the champion, features for selection, and the ground-truth wall.

When the engine is on, the only labels that train a model are auto-labels (champion
confidence >= threshold) and human labels that came back through the Label Studio queue.
A clip's own `/ground_truth` channel must not be used as a training label then: the labels
stage calls `hide_ground_truth(frames)` before `labels.build_labels`, and only the simulated
annotator may look the truth up, for the frames the queue sent it.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import torch

from flywheel import deploy
from flywheel.engine.shadow import onnx_probs, softmax
from flywheel.labels import AutoLabeler
from flywheel.reader import decode_image

EMBEDDING_OUTPUT = "embedding"  # the optional second output of a deployed graph


def decode_images(images: list[bytes], size: int, *, frame_ids: list[str] | None = None) -> np.ndarray:
    """Encoded frames -> model input (N, 3, size, size) uint8, decoded and resized as the reader does."""
    out = np.empty((len(images), 3, size, size), np.uint8)
    for i, data in enumerate(images):
        out[i] = decode_image(data, size, where=frame_ids[i] if frame_ids else f"image {i}")
    return out


def champion_autolabeler(session: ort.InferenceSession, manifest: dict) -> AutoLabeler:
    """The AutoLabeler `labels.build_labels` expects, from the deployed graph: (class index, max softmax)."""
    size = int(manifest["image_size"])

    def label(images: list[bytes], frame_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if not images:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        probs = onnx_probs(session, decode_images(images, size, frame_ids=list(frame_ids)))  # (N, C)
        return probs.argmax(axis=1).astype(np.int32), probs.max(axis=1).astype(np.float32)

    return label


@torch.no_grad()
def embed_and_predict(
    model: torch.nn.Module | ort.InferenceSession, images: np.ndarray, *, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, C) float32 and penultimate-layer embeddings (N, D) float32 for uint8 (N, 3, S, S).

    A torch FrameClassifier gives both from one pass (`embed()` then the head). An ONNX
    session needs a graph with a second output named "embedding"; the graph that
    `deploy.export_onnx` writes today has only "logits", so pass the torch weights instead.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N, 3, S, S), got {getattr(images, 'dtype', type(images))} "
                         f"{getattr(images, 'shape', '')}")  # fmt: skip
    if isinstance(model, ort.InferenceSession):
        return _onnx_embed_and_predict(model, images, batch_size)
    if not hasattr(model, "embed") or not hasattr(model, "head"):
        raise ValueError(f"model must be a FrameClassifier (embed + head) or an onnxruntime session, "
                         f"got {type(model).__name__}")  # fmt: skip
    was_training = model.training
    model.eval()
    probs, feats = [], []
    try:
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))
            z = model.embed(x)  # (b, D)
            feats.append(z.float().numpy())
            probs.append(torch.softmax(model.head(z).float(), dim=1).numpy())  # (b, C)
    finally:
        model.train(was_training)
    if not probs:
        raise ValueError("images is empty: nothing to embed")
    return np.concatenate(probs), np.concatenate(feats)


def _onnx_embed_and_predict(session: ort.InferenceSession, images: np.ndarray, batch_size: int):
    names = [o.name for o in session.get_outputs()]
    if EMBEDDING_OUTPUT not in names:
        raise ValueError(f"the ONNX graph has outputs {names}, no {EMBEDDING_OUTPUT!r}: embeddings need the "
                         f"torch weights (load_weights) or a graph exported with an embedding output")  # fmt: skip
    probs, feats = [], []
    for i in range(0, len(images), batch_size):
        logits, z = session.run([deploy.OUTPUT_NAME, EMBEDDING_OUTPUT], {deploy.INPUT_NAME: images[i : i + batch_size]})
        probs.append(softmax(logits))
        feats.append(z.astype(np.float32))
    if not probs:
        raise ValueError("images is empty: nothing to embed")
    return np.concatenate(probs), np.concatenate(feats)


def hide_ground_truth(frames: pa.Table) -> pa.Table:
    """The frames table with every `ground_truth` set to null: what the labels stage sees when the engine is on."""
    if "ground_truth" not in frames.column_names:
        return frames
    i = frames.column_names.index("ground_truth")
    return frames.set_column(i, frames.field(i), pa.nulls(frames.num_rows, frames.field(i).type))
