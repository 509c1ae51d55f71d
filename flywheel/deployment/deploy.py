"""Deployment: export to ONNX, check parity with torch, publish to the store, roll back.

Layout (DESIGN.md §2): `deploy/<model>/<version>/model.onnx` + `manifest.json`, and
`deploy/<model>/current.json` naming the deployed version. Writes are atomic and ordered
ONNX -> manifest -> current.json, so a crash leaves at worst an unreferenced version folder.
`current.json` keeps the previous champions (oldest first) in `history`, so rollback can
walk back one version at a time. The flywheel moves `current.json` through flywheel/deployment/champion.py
(`promote`, `rollback`), which holds the deploy lease and moves MLflow's `champion` alias with it;
`deploy` and `rollback` here read and write `current.json` without a lock.

The graph takes raw uint8 pixels (N, 3, S, S), RGB, as the fleet has them: the model
normalizes inside (flywheel/model.py). Output: logits (N, C).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from datetime import UTC, datetime

import numpy as np
import onnxruntime as ort
import torch

from flywheel import layout
from flywheel.model_input import INPUT_NAME, input_spec
from flywheel.predict import EMBEDDING_NAME, OUTPUT_NAME
from flywheel.store import Store


class ParityError(RuntimeError):
    """onnxruntime and torch disagree on the same images beyond the tolerance."""


class RollbackError(RuntimeError):
    """There is no deployed model, or no previous champion, to roll back to."""


# ---------------------------------------------------------------------------------------------
# Export and parity


class _WithEmbedding(torch.nn.Module):
    """Logits and the penultimate features, so the data engine can select frames by embedding."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        z = self.model.embed(x)
        return self.model.head(z), z


def export_onnx(model: torch.nn.Module, *, image_size: int, opset: int = 17) -> bytes:
    """The model as an ONNX graph: input "image" uint8 (N, 3, S, S), outputs "logits" (N, C) and,
    for a FrameClassifier, "embedding" (N, D)."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    model = _unwrap(model)
    was_training = model.training
    device = next(model.parameters()).device
    dummy = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8, device=device)
    buf = io.BytesIO()
    model.eval()
    try:
        # The TorchScript exporter (dynamo=False): the dynamo exporter needs `onnxscript`, which
        # is not a dependency, and this small CNN traces exactly. Its deprecation notice is known.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            embeds = hasattr(model, "embed") and hasattr(model, "head")
            outputs = [OUTPUT_NAME, EMBEDDING_NAME] if embeds else [OUTPUT_NAME]
            torch.onnx.export(
                _WithEmbedding(model) if embeds else model, (dummy,), buf, dynamo=False,
                opset_version=opset, input_names=[INPUT_NAME], output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
            )  # fmt: skip
    finally:
        model.train(was_training)
    data = buf.getvalue()
    import onnx  # here, not at the top: ~0.9 s, and a training process or a CLI command rarely needs it

    onnx.checker.check_model(onnx.load_from_string(data))
    return data


def check_parity(
    model: torch.nn.Module, onnx_bytes: bytes, images: np.ndarray, *, atol: float = 1e-3
) -> float:
    """Max |logits_torch - logits_onnxruntime| on `images` (uint8 (N, 3, S, S)).

    Raises ParityError when it exceeds `atol`, naming the worst frame.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"images must be a uint8 array (N, 3, S, S), got {getattr(images, 'shape', images)}"
        )
    if len(images) == 0:
        raise ValueError("images is empty: parity needs at least one frame")
    model = _unwrap(model)
    was_training = model.training
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            expected = model.eval()(torch.from_numpy(images).to(device)).float().cpu().numpy()
    finally:
        model.train(was_training)
    got = session(onnx_bytes).run([OUTPUT_NAME], {INPUT_NAME: images})[0]
    if got.shape != expected.shape:
        raise ParityError(
            f"onnxruntime output shape {got.shape} != torch output shape {expected.shape}"
        )
    diff = np.abs(got.astype(np.float64) - expected)
    worst = float(diff.max())
    if not worst <= atol:  # also catches NaN
        frame = (
            int(np.unravel_index(np.nanargmax(diff), diff.shape)[0]) if np.isfinite(worst) else -1
        )
        raise ParityError(
            f"onnxruntime and torch logits differ by {worst:.3g} > atol {atol:g} "
            f"(worst frame {frame} of {len(images)}); the exported graph does not match the model"
        )
    return worst


CUDA_PROVIDER = "CUDAExecutionProvider"


def providers(device: str = "cpu") -> list[str]:
    """onnxruntime execution providers for a compute device (`train.device`): CUDA first for 'cuda' and
    'auto' when this onnxruntime has it (the onnxruntime-gpu build), else the CPU alone. A 'cuda'
    device with a CPU-only onnxruntime scores on the CPU; the session's providers say so."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device != "cpu" and CUDA_PROVIDER in ort.get_available_providers():
        return [CUDA_PROVIDER, "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(onnx_bytes: bytes, device: str = "cpu") -> ort.InferenceSession:
    """An onnxruntime session for an ONNX graph, on the compute device where onnxruntime can (`providers`)."""
    return ort.InferenceSession(onnx_bytes, providers=providers(device))


def graph_spec(onnx_bytes: bytes) -> tuple[dict, dict]:
    """The graph's input and output as `{name, dtype, shape}` (symbolic dims as strings)."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph

    def spec(v):
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        return {"name": v.name, "dtype": dtype, "shape": dims}

    return spec(graph.input[0]), spec(graph.output[0])


# ---------------------------------------------------------------------------------------------
# Publish, read back, roll back


def deploy(
    store: Store,
    *,
    model_name: str,
    version: str,
    onnx_bytes: bytes,
    classes: list[str],
    image_size: int,
    metrics: dict,
    dataset: dict,
    mlflow_version: str | None,
    gate: dict,
    forced_by: dict | None = None,
    int8: dict | None = None,
    serve: str = "fp32",
    approval: dict | None = None,
) -> dict:
    """Publish `onnx_bytes` as `version` and make it current; returns the manifest.

    `dataset` is `{name, version, manifest_sha256}`; `gate` the gate decision (`to_dict()`);
    `forced_by` `{who, why}` for a forced promotion; `int8` the int8 graph built beside it
    (`{bytes, check, latency_ms}`, flywheel/deployment/quantize.py) and `serve` which of the two the fleet
    runs ("int8" only with an int8 graph whose check passed); `approval` who approved it
    (`gate.require_approval`). Deploying the version that is already
    deployed with the same ONNX is a no-op (a retried run); a version is immutable, so other
    bytes under an existing version are refused.
    """
    version = str(version)
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    _, out = _check_graph(onnx_bytes, classes=classes, image_size=image_size)
    missing = {"name", "version", "manifest_sha256"} - set(dataset)
    if missing:
        raise ValueError(f"dataset is missing {sorted(missing)}; got keys {sorted(dataset)}")
    if forced_by is not None and not {"who", "why"} <= set(forced_by):
        raise ValueError(f"forced_by needs 'who' and 'why', got keys {sorted(forced_by)}")
    if serve not in ("fp32", "int8") or (serve == "int8" and not (int8 and int8["check"]["passed"])):
        raise ValueError(f"serve must be 'fp32', or 'int8' with an int8 graph that passed its check; got {serve!r}")

    cur = current(store, model_name)
    manifest_key = layout.deploy_manifest_key(model_name, version)
    if store.exists(manifest_key):
        manifest = store.read_json(manifest_key)
        if manifest["onnx"]["sha256"] != sha:
            raise ValueError(
                f"{store.uri(layout.deploy_prefix(model_name, version))} already holds a different model (sha256 "
                f"{manifest['onnx']['sha256'][:12]}); deployed versions are immutable"
            )
    else:
        manifest = {
            "format": 1,
            "model_name": model_name,
            "version": version,
            "onnx": {"key": layout.deploy_onnx_key(model_name, version), "sha256": sha, "bytes": len(onnx_bytes)},
            "input": input_spec(image_size),  # checked against the graph above
            "output": out,
            "classes": list(classes),
            "image_size": image_size,
            "metrics": metrics,
            "dataset": dict(dataset),
            "mlflow_version": mlflow_version,
            "gate": gate,
            "forced_by": forced_by,
            "approval": approval,
            "int8": None,
            "latency_ms": int8 and int8["latency_ms"],  # {"fp32": {"b1": ms, "b32": ms}, "int8": {...}}
            "serve": serve,  # the graph the fleet runs: "onnx" (fp32) or "int8"
            "deployed_at": _now(),
            "previous_version": cur["version"] if cur else None,
        }
        if int8 is not None and not int8["check"]["passed"]:  # fp32 alone; the check says why
            manifest["int8"] = {"key": None, "sha256": None, "bytes": None, "check": int8["check"]}
        elif int8 is not None:
            key = layout.deploy_int8_key(model_name, version)
            _check_graph(int8["bytes"], classes=classes, image_size=image_size)
            manifest["int8"] = {"key": key, "sha256": hashlib.sha256(int8["bytes"]).hexdigest(),
                                "bytes": len(int8["bytes"]), "check": int8["check"]}  # fmt: skip
            store.write_bytes(key, int8["bytes"])
        store.write_bytes(layout.deploy_onnx_key(model_name, version), onnx_bytes)
        store.write_json(manifest_key, manifest)  # after the ONNX it vouches for
    if cur is None or cur["version"] != version:
        history = (cur["history"] + [cur["version"]]) if cur else []
        _write_current(store, model_name, version, sha, history=history, event="deploy")
    return manifest


def current(store: Store, model_name: str) -> dict | None:
    """The content of `deploy/<model>/current.json`, or None if nothing was ever deployed."""
    key = layout.current_key(model_name)
    return store.read_json(key) if store.exists(key) else None


def rollback(store: Store, model_name: str) -> tuple[str, str]:
    """Make the previous champion current again; returns (from_version, to_version)."""
    cur = current(store, model_name)
    if cur is None:
        raise RollbackError(
            f"nothing is deployed for model {model_name!r}: no {layout.current_key(model_name)}"
        )
    if not cur["history"]:
        raise RollbackError(
            f"model {model_name!r} version {cur['version']} has no previous champion to roll back to"
        )
    to = cur["history"][-1]
    manifest_key = layout.deploy_manifest_key(model_name, to)
    if not store.exists(manifest_key):
        raise RollbackError(
            f"cannot roll back to version {to}: {store.uri(manifest_key)} is missing"
        )
    sha = store.read_json(manifest_key)["onnx"]["sha256"]
    _write_current(store, model_name, to, sha, history=cur["history"][:-1], event="rollback",
                   rolled_back_from=cur["version"])  # fmt: skip
    return cur["version"], to


def load_deployed(store: Store, model_name: str, device: str = "cpu") -> tuple[ort.InferenceSession, dict]:
    """The current model as the fleet runs it (the manifest's `serve`: fp32 or int8) as an onnxruntime
    session on `device` (`providers`), and its manifest (sha256 verified)."""
    cur = current(store, model_name)
    if cur is None:
        raise FileNotFoundError(
            f"nothing is deployed for model {model_name!r}: no {layout.current_key(model_name)}"
        )
    manifest = store.read_json(layout.deploy_manifest_key(model_name, cur["version"]))
    graph = manifest["int8"] if manifest.get("serve") == "int8" else manifest["onnx"]
    data = store.read_bytes(graph["key"])
    if hashlib.sha256(data).hexdigest() != graph["sha256"]:
        raise ValueError(f"{store.uri(graph['key'])} does not match its manifest's sha256")
    return session(data, device), manifest


def _write_current(store: Store, model_name: str, version: str, sha: str, *, history: list[str],
                   event: str, rolled_back_from: str | None = None) -> None:  # fmt: skip
    store.write_json(layout.current_key(model_name), {
        "model_name": model_name,
        "version": version,
        "manifest": layout.deploy_manifest_key(model_name, version),
        "onnx_sha256": sha,
        "history": history,  # previous champions, oldest first
        "event": event,
        "rolled_back_from": rolled_back_from,
        "updated_at": _now(),
    })  # fmt: skip


def _check_graph(onnx_bytes: bytes, *, classes: list[str], image_size: int) -> tuple[dict, dict]:
    inp, out = graph_spec(onnx_bytes)
    want_in = {"name": INPUT_NAME, "dtype": "uint8", "shape": [3, image_size, image_size]}
    got_in = {"name": inp["name"], "dtype": inp["dtype"], "shape": inp["shape"][1:]}
    if got_in != want_in:
        raise ValueError(f"onnx_bytes input is {inp}, expected {want_in} after the batch dim")
    if out["name"] == "heatmap":  # a detector (flywheel/detection/export.py): per-class heatmaps at stride 4
        side = [d if isinstance(d, str) else int(d) for d in out["shape"][2:]]  # the exporter may leave them symbolic
        if out["shape"][1] != len(classes) or any(isinstance(d, int) and d != image_size // 4 for d in side):
            raise ValueError(f"onnx_bytes heatmap is {out}, expected {len(classes)} classes at {image_size // 4} px")
        return inp, out
    if out["name"] != OUTPUT_NAME or out["shape"][1:] != [len(classes)]:
        raise ValueError(
            f"onnx_bytes output is {out}, expected {OUTPUT_NAME!r} with {len(classes)} classes"
        )
    return inp, out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
