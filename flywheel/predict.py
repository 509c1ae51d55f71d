"""One predictor: class probabilities (and embeddings) for model input, batched, on the compute device.

The same function scores a torch `FrameClassifier` (evaluation, the GPU when there is one) and
the deployed ONNX graph (shadow mode, auto-labels, the label-error check), so every stage turns
logits into probabilities the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import torch

from flywheel import progress as bars
from flywheel.model_input import INPUT_NAME, check_input

if TYPE_CHECKING:
    from tqdm import tqdm

OUTPUT_NAME = "logits"  # the ONNX graph's outputs
EMBEDDING_NAME = "embedding"


@dataclass(frozen=True)
class Predictions:
    probs: np.ndarray  # (N, C) float32 softmax probabilities
    embeddings: np.ndarray | None  # (N, D) float32 penultimate-layer features, when asked for


def softmax(logits: np.ndarray) -> np.ndarray:
    """(N, C) logits -> (N, C) float32 probabilities, numerically stable."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def predict(
    model: torch.nn.Module | ort.InferenceSession,
    images: np.ndarray,
    *,
    embeddings: bool = False,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> Predictions:
    """Probabilities (and embeddings) of uint8 model input (N, 3, S, S), in eval mode, in fp32.

    A torch model runs on `device` (and is left there, in its previous train/eval mode); an ONNX
    session runs where its providers say. Embeddings need a FrameClassifier (`embed` + `head`) or
    a graph with an "embedding" output (what `deploy.export_onnx` writes). `progress`: a bar of
    the frames done on stderr (None: when the command line shows bars, `flywheel.progress`).
    """
    check_input(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise ValueError("images is empty: nothing to predict")
    with bars.bar(total=len(images), desc="predict", unit="frame", progress=progress) as bar:
        if isinstance(model, ort.InferenceSession):
            return _predict_onnx(model, images, embeddings, batch_size, bar)
        return _predict_torch(model, images, embeddings, batch_size, torch.device(device), bar)


def _predict_torch(model: torch.nn.Module, images: np.ndarray, embeddings: bool, batch_size: int,
                   device: torch.device, bar: tqdm) -> Predictions:  # fmt: skip
    if embeddings and not (hasattr(model, "embed") and hasattr(model, "head")):
        raise ValueError(f"embeddings need a FrameClassifier (embed + head), got {type(model).__name__}")
    was_training = model.training
    model.eval().to(device)
    probs, feats = [], []
    try:
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device)
                if embeddings:
                    z = model.embed(x)  # (b, D)
                    feats.append(z.float().cpu().numpy())
                    logits = model.head(z)
                else:
                    logits = model(x)
                probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())  # (b, C)
                bar.update(len(x))
    finally:
        model.train(was_training)
    return Predictions(np.concatenate(probs), np.concatenate(feats) if embeddings else None)


def _predict_onnx(session: ort.InferenceSession, images: np.ndarray, embeddings: bool,
                  batch_size: int, bar: tqdm) -> Predictions:  # fmt: skip
    outputs = [OUTPUT_NAME]
    if embeddings:
        names = [o.name for o in session.get_outputs()]
        if EMBEDDING_NAME not in names:
            raise ValueError(f"the ONNX graph has outputs {names}, no {EMBEDDING_NAME!r}: embeddings need "
                             "a graph exported with an embedding output (deploy.export_onnx)")  # fmt: skip
        outputs.append(EMBEDDING_NAME)
    probs, feats = [], []
    for i in range(0, len(images), batch_size):
        out = session.run(outputs, {INPUT_NAME: images[i : i + batch_size]})
        probs.append(softmax(out[0]))
        if embeddings:
            feats.append(out[1].astype(np.float32))
        bar.update(len(out[0]))
    return Predictions(np.concatenate(probs), np.concatenate(feats) if embeddings else None)
