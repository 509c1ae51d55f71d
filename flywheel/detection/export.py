"""The detector as an ONNX graph, and its parity check on boxes.

The graph takes uint8 images "image" (N, 3, S, S) and gives the heads' raw outputs, "heatmap" (logits),
"size" and "offset"; decoding (peaks and boxes) stays in `model.decode`, the same code for torch and
onnxruntime outputs. The parity check decodes both on the same frames and requires the same boxes:
the same classes, scores within `score_tol`, corners within `box_tol` pixels.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from flywheel.detection.model import CenterNet, decode

INPUT, OUTPUTS = "image", ("heatmap", "size", "offset")


def export_onnx(model: CenterNet, *, opset: int = 17) -> bytes:
    model = getattr(model, "module", model)
    side = model.cfg.image_size
    dummy = torch.zeros(2, 3, side, side, dtype=torch.uint8, device=next(model.parameters()).device)
    buf, was_training = io.BytesIO(), model.training
    model.eval()
    try:
        with warnings.catch_warnings():  # the TorchScript exporter, as the classifier's (deployment/deploy.py)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (dummy,), buf, dynamo=False, opset_version=opset, input_names=[INPUT],
                              output_names=list(OUTPUTS), dynamic_axes={n: {0: "batch"} for n in (INPUT, *OUTPUTS)})  # fmt: skip
    finally:
        model.train(was_training)
    import onnx

    onnx.checker.check_model(onnx.load_from_string(buf.getvalue()))
    return buf.getvalue()


def onnx_detect(data: bytes, images: np.ndarray, *, k: int = 50) -> list[list[tuple]]:
    """Per image: [(class, score, x, y, w, h)] from the ONNX graph on CPU (onnxruntime), decoded as in torch."""
    import onnxruntime as ort

    return session_detect(ort.InferenceSession(data, providers=["CPUExecutionProvider"]), images, k=k)


def session_detect(session, images: np.ndarray, *, k: int = 50, batch_size: int = 64) -> list[list[tuple]]:
    """`onnx_detect` with an onnxruntime session already open (the deployed champion's)."""
    out: list[list[tuple]] = []
    for i in range(0, len(images), batch_size):
        x = np.ascontiguousarray(images[i : i + batch_size], dtype=np.uint8)
        heat, size, offset = session.run(list(OUTPUTS), {INPUT: x})
        out += decode((torch.from_numpy(heat), torch.from_numpy(size), torch.from_numpy(offset)), k=k)
    return out


def check_parity(model: CenterNet, data: bytes, images: np.ndarray, *, score_tol: float = 1e-3,
                 box_tol: float = 0.05, min_score: float = 0.05) -> dict:  # fmt: skip
    """Torch and ONNX detections on `images` above `min_score`: {"ok", "frames", "boxes", "max_score_diff",
    "max_corner_diff", "mismatch"} where mismatch names the first frame whose boxes differ."""
    from flywheel.detection.train import detect

    ours = detect(model, images)
    theirs = onnx_detect(data, images)
    out = {"ok": True, "frames": len(images), "boxes": 0, "max_score_diff": 0.0, "max_corner_diff": 0.0, "mismatch": None}
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        # each torch box above min_score against the closest ONNX box of its class; ONNX boxes near the
        # threshold may fall either side of it, so those beyond the tolerance must all be matched
        left = [d for d in b if d[1] >= min_score - score_tol]
        for d in (d for d in a if d[1] >= min_score):
            same = [e for e in left if e[0] == d[0]]
            if not same:
                out.update(ok=False, mismatch=f"frame {i}: a class {d[0]} box at {d[2]:.1f},{d[3]:.1f} in torch only")
                return out
            e = min(same, key=lambda e: max(abs(x - y) for x, y in zip(d[2:], e[2:], strict=True)))
            left.remove(e)
            out["boxes"] += 1
            out["max_score_diff"] = max(out["max_score_diff"], abs(d[1] - e[1]))
            out["max_corner_diff"] = max(out["max_corner_diff"], *(abs(x - y) for x, y in zip(d[2:], e[2:], strict=True)))
        if extra := [e for e in left if e[1] >= min_score + score_tol]:
            out.update(ok=False, mismatch=f"frame {i}: {len(extra)} box(es) in ONNX only")
            return out
    if out["max_score_diff"] > score_tol or out["max_corner_diff"] > box_tol:
        out.update(ok=False, mismatch=f"scores differ by {out['max_score_diff']:.2g}, corners by {out['max_corner_diff']:.2g} px")
    return out
