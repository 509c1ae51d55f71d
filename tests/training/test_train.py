"""The trainer on tiny synthetic frames: learning, resume after a crash, warm start, DDP, predict."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from flywheel.model import load_weights
from flywheel.predict import predict
from flywheel.training.checkpoint import CHECKPOINT_NAME
from flywheel.training.device import pick_device
from flywheel.training.train import TrainConfig, train

CLASSES = ["red", "green", "blue"]
COLORS = torch.tensor([[220, 30, 30], [30, 200, 40], [40, 50, 230]], dtype=torch.float32)  # (C, 3)
SIZE = 16
REPO = Path(__file__).resolve().parents[2]


def frames(n: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (n, 3, SIZE, SIZE): grey noise with a square of the class colour somewhere."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    images = torch.rand(n, 3, SIZE, SIZE, generator=g) * 255
    side = SIZE // 2
    for i in range(n):
        r, c = torch.randint(0, SIZE - side + 1, (2,), generator=g).tolist()
        images[i, :, r : r + side, c : c + side] = COLORS[labels[i]].view(3, 1, 1)
    return images.to(torch.uint8), labels


class Frames(Dataset):
    """Map-style sample dicts shaped like the shard reader's."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "frame_id": f"f{i}"}


class StreamedFrames(IterableDataset):
    """An IterableDataset without len, with set_epoch/state_dict like the shard reader."""

    def __init__(self, images, labels):
        self.images, self.labels, self.epoch, self.epochs_seen = images, labels, 0, []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]

    def __iter__(self):
        order = torch.randperm(
            len(self.labels), generator=torch.Generator().manual_seed(self.epoch)
        )
        for i in order.tolist():
            yield {"image": self.images[i], "label": self.labels[i], "frame_id": f"f{i}"}


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=32, lr=1e-2, width=8, depth=1, image_size=SIZE, device="cpu")
    return TrainConfig(**{**base, **kw})


def loaders(n_train: int = 192, n_val: int = 96):
    train_set, val_set = Frames(*frames(n_train, seed=0)), Frames(*frames(n_val, seed=1))
    return DataLoader(train_set, batch_size=32, shuffle=True), DataLoader(val_set, batch_size=64)


def accuracy(weights: bytes, n: int = 96, seed: int = 2) -> float:
    model, classes = load_weights(weights)
    images, labels = frames(n, seed=seed)
    probs = predict(model, images.numpy(), batch_size=40, device="cpu").probs
    return float((probs.argmax(1) == labels.numpy()).mean())


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_learns_separable_frames(schedule):
    train_loader, val_loader = loaders()
    result = train(
        train_loader=train_loader,
        val_loader=val_loader,
        classes=CLASSES,
        cfg=tiny_cfg(schedule=schedule, epochs=4),
        checkpoint_dir=None,
    )
    h = result.history
    assert [m["epoch"] for m in h] == [0, 1, 2, 3]
    assert set(h[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"}
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["val_acc"] > 0.85  # chance is 1/3
    assert accuracy(result.weights) > 0.85  # on unseen frames, through load_weights + predict
    assert result.device == "cpu" and result.world_size == 1
    assert result.resumed_from_epoch is None and not result.warm_started
    # The schedule ends near zero learning rate.
    assert h[-1]["lr"] < 0.1 * max(m["lr"] for m in h)


@pytest.mark.parametrize(
    "epochs, steps, warmup_pct", [(1, 1, 0.25), (1, 4, 0.25), (2, 2, 0.25), (1, 2, 0.5)]
)
def test_a_run_of_a_few_steps_gets_a_schedule(epochs, steps, warmup_pct):
    """Fewer steps than a warmup needs: OneCycleLR divides by zero when its warmup is one step."""
    images, labels = frames(8 * steps, seed=0)
    batches = [
        {"image": images[i : i + 8], "label": labels[i : i + 8]} for i in range(0, 8 * steps, 8)
    ]
    cfg = tiny_cfg(epochs=epochs, warmup_pct=warmup_pct, schedule="onecycle")
    result = train(
        train_loader=batches, val_loader=batches, classes=CLASSES, cfg=cfg, checkpoint_dir=None
    )
    assert [m["epoch"] for m in result.history] == list(range(epochs))
    assert all(0 < m["lr"] <= cfg.lr for m in result.history)


def test_epochs_unset_take_the_step_budget_within_bounds():
    auto = tiny_cfg(epochs=None, steps=800)  # the default floor of 20 passes bites past 800 / 20 = 40 batches
    assert [auto.epochs_for(n) for n in (14, 37, 400, 5000, 1)] == [58, 22, 20, 20, 100]
    floor = tiny_cfg(epochs=None, steps=400, min_passes=12)  # the budget grows with the data past 400 / 12 batches
    assert [floor.epochs_for(n) for n in (14, 33, 34, 65, 5000)] == [29, 13, 12, 12, 12]
    assert tiny_cfg(epochs=4).epochs_for(14) == 4  # a number is a number, whatever the data
    with pytest.raises(ValueError, match="steps_per_epoch"):
        auto.epochs_for(0)


def test_a_run_with_epochs_unset_takes_its_step_budget():
    images, labels = frames(32, seed=0)
    batches = [{"image": images[i : i + 8], "label": labels[i : i + 8]} for i in range(0, 32, 8)]
    result = train(train_loader=batches, classes=CLASSES, cfg=tiny_cfg(epochs=None, steps=20, min_passes=1))
    assert len(result.history) == 5  # 4 steps per pass, 20 steps
    lrs = [m["lr"] for m in result.history]
    assert lrs[-1] < 0.1 * max(lrs)  # one schedule over all five passes


def test_weights_and_checkpoint_load_with_weights_only(tmp_path):
    train_loader, _ = loaders(64)
    result = train(
        train_loader=train_loader, classes=CLASSES, cfg=tiny_cfg(epochs=1), checkpoint_dir=tmp_path
    )
    blob = torch.load(io.BytesIO(result.weights), weights_only=True)
    assert blob["classes"] == CLASSES and blob["config"]["width"] == 8
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 1
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary behind


def without_speed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "images_per_s"} for m in history]


class Crash(RuntimeError):
    pass


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    cfg = tiny_cfg(epochs=2)
    train_loader, val_loader = loaders()
    full = train(
        train_loader=train_loader,
        val_loader=val_loader,
        classes=CLASSES,
        cfg=cfg,
        checkpoint_dir=tmp_path / "full",
    )

    def crash_after_first_epoch(epoch, metrics):
        if epoch == 0:
            raise Crash("simulated crash after epoch 0")

    train_loader, val_loader = loaders()
    with pytest.raises(Crash):
        train(
            train_loader=train_loader,
            val_loader=val_loader,
            classes=CLASSES,
            cfg=cfg,
            checkpoint_dir=tmp_path / "crashy",
            on_epoch_end=crash_after_first_epoch,
        )
    assert (tmp_path / "crashy" / CHECKPOINT_NAME).exists()

    seen = []
    train_loader, val_loader = loaders()
    resumed = train(
        train_loader=train_loader,
        val_loader=val_loader,
        classes=CLASSES,
        cfg=cfg,
        checkpoint_dir=tmp_path / "crashy",
        on_epoch_end=lambda e, m: seen.append(e),
    )
    assert resumed.resumed_from_epoch == 1 and seen == [1]
    assert len(resumed.history) == 2

    assert without_speed(resumed.history) == without_speed(full.history)
    a, _ = load_weights(full.weights)
    b, _ = load_weights(resumed.weights)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name


def test_resume_refuses_a_checkpoint_of_another_recipe(tmp_path):
    train_loader, _ = loaders(64)
    train(
        train_loader=train_loader, classes=CLASSES, cfg=tiny_cfg(epochs=1), checkpoint_dir=tmp_path
    )
    with pytest.raises(ValueError, match="lr"):
        train(
            train_loader=train_loader,
            classes=CLASSES,
            cfg=tiny_cfg(epochs=1, lr=0.5),
            checkpoint_dir=tmp_path,
        )
    with pytest.raises(ValueError, match="classes"):
        train(
            train_loader=train_loader,
            classes=["a", "b", "c"],
            cfg=tiny_cfg(epochs=1),
            checkpoint_dir=tmp_path,
        )


@pytest.fixture(scope="module")
def champion() -> bytes:
    train_loader, _ = loaders()
    return train(train_loader=train_loader, classes=CLASSES, cfg=tiny_cfg(epochs=3)).weights


def _stem(weights: bytes) -> torch.Tensor:
    return load_weights(weights)[0].stem[0].weight


def test_warm_start_used_when_classes_and_model_match(champion):
    train_loader, _ = loaders(64)
    # A learning rate near zero: the result stays at the champion only if it started there.
    result = train(
        train_loader=train_loader,
        classes=CLASSES,
        cfg=tiny_cfg(epochs=1, lr=1e-9),
        warm_start=champion,
    )
    assert result.warm_started and result.warm_start_note == ""
    assert torch.allclose(_stem(result.weights), _stem(champion), atol=1e-6)
    assert result.history[0]["train_acc"] > 0.85  # it already knows the task


@pytest.mark.parametrize(
    ("classes", "cfg", "why"),
    [
        (
            ["red", "blue", "green"],
            tiny_cfg(epochs=1, lr=1e-9),
            "classes",
        ),  # same names, other order
        (CLASSES, tiny_cfg(epochs=1, lr=1e-9, width=12), "model config"),
    ],
)
def test_warm_start_skipped_when_classes_or_model_differ(champion, classes, cfg, why):
    train_loader, _ = loaders(64)
    result = train(train_loader=train_loader, classes=classes, cfg=cfg, warm_start=champion)
    assert not result.warm_started
    assert "warm start skipped" in result.warm_start_note and why in result.warm_start_note
    if cfg.width == 8:
        assert not torch.allclose(_stem(result.weights), _stem(champion), atol=1e-3)


def test_iterable_loader_needs_steps_and_gets_epochs_and_state(tmp_path):
    stream = StreamedFrames(*frames(96, seed=0))
    loader = DataLoader(stream, batch_size=32)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        train(train_loader=loader, classes=CLASSES, cfg=tiny_cfg(epochs=2))
    result = train(
        train_loader=loader,
        classes=CLASSES,
        cfg=tiny_cfg(epochs=2),
        set_epoch=stream.set_epoch,
        steps_per_epoch=3,
        checkpoint_dir=tmp_path,
    )
    assert stream.epochs_seen == [0, 1] and len(result.history) == 2
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["loader"] == {"epoch": 1}


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (
            {"image": torch.zeros(4, 3, SIZE, SIZE), "label": torch.zeros(4, dtype=torch.long)},
            "uint8",
        ),
        (
            {
                "image": torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
                "label": torch.zeros(4, dtype=torch.long),
            },
            "uint8",
        ),
        (
            {
                "image": torch.zeros(4, 3, SIZE, SIZE, dtype=torch.uint8),
                "label": torch.full((4,), 3),
            },
            r"\[0, 3\)",
        ),
        ({"pixels": torch.zeros(4, 3, SIZE, SIZE, dtype=torch.uint8)}, "'image' and 'label'"),
    ],
)
def test_bad_batches_name_the_problem(batch, match):
    with pytest.raises(ValueError, match=match):
        train(train_loader=[batch], classes=CLASSES, cfg=tiny_cfg(epochs=1))


def test_empty_loaders_are_errors_not_nan():
    train_loader, _ = loaders(64)
    with pytest.raises(ValueError, match="train_loader yielded no batches"):
        train(train_loader=[], classes=CLASSES, cfg=tiny_cfg(epochs=1), steps_per_epoch=2)
    with pytest.raises(ValueError, match="val_loader yielded no batches"):
        train(train_loader=train_loader, val_loader=[], classes=CLASSES, cfg=tiny_cfg(epochs=1))


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA"):
            pick_device("cuda")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_on_cpu(tmp_path):
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(REPO / "tests" / "ddp_worker.py"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["batches"] == r1["batches"] == 3 * 6  # 3 epochs of 192 frames / 32 per rank
    # Losses and accuracies are all-reduced, so both ranks report the same (speed is per rank's clock).
    assert without_speed(r0["history"]) == without_speed(r1["history"])
    assert r0["history"][-1]["train_loss"] < r0["history"][0]["train_loss"]
    assert r0["history"][-1]["val_acc"] > 0.8
    assert r0["has_weights"] and not r1["has_weights"]
    assert (tmp_path / "ckpt" / CHECKPOINT_NAME).exists()
    assert accuracy((tmp_path / "weights.pt").read_bytes()) > 0.8


def test_small_inputs_keep_their_resolution_in_the_stem():
    assert tiny_cfg(image_size=32).architecture(3).stem_stride == 1
    assert tiny_cfg(image_size=64).architecture(3).stem_stride == 2
    assert tiny_cfg(image_size=32, stem_stride=2).architecture(3).stem_stride == 2  # a set value wins


@pytest.mark.parametrize("size", [32, 33, 96])
def test_a_pooled_stem_convolves_every_pixel_then_halves_like_the_strided_one(size):
    import numpy as np
    import onnxruntime as ort

    from flywheel.deployment.deploy import export_onnx
    from flywheel.model import build_model, save_weights

    cfg = tiny_cfg(image_size=size, stem_stride=2, stem_pool=True).architecture(3)
    model = build_model(cfg).eval()
    stem = model.stem
    assert isinstance(stem[-1], torch.nn.MaxPool2d) and stem[0].stride == (1, 1)
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        features = model.stages(model.stem((x.float() - model.mean) / model.std))
    assert features.shape[-1] == cfg.feature_side  # odd sides round up as the strided stem's do
    again, _ = load_weights(save_weights(model, cfg, ["a", "b", "c"]))
    assert again.cfg.stem_pool and isinstance(again.stem[-1], torch.nn.MaxPool2d)
    images = x.numpy()
    session = ort.InferenceSession(export_onnx(model, image_size=size), providers=["CPUExecutionProvider"])
    session_probs = predict(session, images).probs  # the deployed graph answers as the trained model
    np.testing.assert_allclose(session_probs, predict(model, images).probs, atol=1e-4)


@pytest.mark.parametrize(("size", "kernel"), [(32, 7), (96, 7), (65, 5)])
def test_a_wider_stem_kernel_keeps_the_map_sides_and_exports(size, kernel):
    import numpy as np
    import onnxruntime as ort

    from flywheel.deployment.deploy import export_onnx
    from flywheel.model import build_model, save_weights

    cfg = tiny_cfg(image_size=size, stem_kernel=kernel).architecture(3)
    assert cfg.feature_side == tiny_cfg(image_size=size).architecture(3).feature_side  # as the 3x3 stem's
    model = build_model(cfg).eval()
    assert model.stem[0].kernel_size == (kernel, kernel)
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        assert model.stages(model.stem((x.float() - model.mean) / model.std)).shape[-1] == cfg.feature_side
    again, _ = load_weights(save_weights(model, cfg, ["a", "b", "c"]))
    assert again.cfg.stem_kernel == kernel
    session = ort.InferenceSession(export_onnx(model, image_size=size), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(predict(session, x.numpy()).probs, predict(model, x.numpy()).probs, atol=1e-4)


def test_weights_saved_before_the_pooled_stem_load_with_the_strided_one():
    from flywheel.model import build_model, save_weights

    cfg = tiny_cfg(image_size=64).architecture(3)
    blob = torch.load(io.BytesIO(save_weights(build_model(cfg), cfg, ["a", "b", "c"])), weights_only=True)
    del blob["config"]["stem_pool"], blob["config"]["stem_kernel"]  # the config of a model saved before the choices
    buf = io.BytesIO()
    torch.save(blob, buf)
    model, _ = load_weights(buf.getvalue())
    assert not model.cfg.stem_pool and model.stem[0].stride == (2, 2) and model.stem[0].kernel_size == (3, 3)


@pytest.mark.parametrize(("size", "stages", "side"), [(32, 3, 8), (64, 4, 4), (96, 4, 6), (96, 2, 24)])
def test_each_stage_halves_the_map_and_doubles_the_channels(size, stages, side):
    import numpy as np
    import onnxruntime as ort

    from flywheel.deployment.deploy import export_onnx
    from flywheel.model import build_model, save_weights

    assert tiny_cfg(image_size=size).architecture(3).stages == 3  # the default
    cfg = tiny_cfg(image_size=size, stages=stages).architecture(3)
    assert (cfg.stages, cfg.feature_side) == (stages, side)
    model = build_model(cfg).eval()
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        features = model.stages(model.stem((x.float() - model.mean) / model.std))
    assert features.shape[1:] == (cfg.width * 2 ** (stages - 1), side, side)
    again, _ = load_weights(save_weights(model, cfg, ["a", "b", "c"]))  # saves, loads and exports as 3 stages do
    assert again.cfg.stages == stages
    session = ort.InferenceSession(export_onnx(model, image_size=size), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(predict(session, x.numpy()).probs, predict(model, x.numpy()).probs, atol=1e-4)


def test_weights_saved_before_stages_were_a_choice_load_with_three():
    from flywheel.model import build_model, save_weights

    cfg = tiny_cfg(image_size=64).architecture(3)
    blob = torch.load(io.BytesIO(save_weights(build_model(cfg), cfg, ["a", "b", "c"])), weights_only=True)
    del blob["config"]["stages"]
    buf = io.BytesIO()
    torch.save(blob, buf)
    model, _ = load_weights(buf.getvalue())
    assert model.cfg.stages == 3 and model.cfg.feature_side == 8


class TurnsBad(StreamedFrames):
    """Frames whose labels are shifted by one class from epoch `turn` on: the model unlearns them."""

    def __init__(self, images, labels, turn: int):
        super().__init__(images, labels)
        self.turn = turn

    def __iter__(self):
        for sample in super().__iter__():
            if self.epoch >= self.turn:
                sample = {**sample, "label": (sample["label"] + 1) % len(CLASSES)}
            yield sample


@pytest.mark.parametrize("keep_best", [True, False])
def test_the_best_val_epoch_is_kept_not_the_last(keep_best):
    data = TurnsBad(*frames(192, seed=0), turn=4)
    _, val_loader = loaders()
    result = train(train_loader=DataLoader(data, batch_size=32), val_loader=val_loader, classes=CLASSES,
                   cfg=tiny_cfg(epochs=8, keep_best=keep_best, schedule="cosine"), set_epoch=data.set_epoch,
                   steps_per_epoch=6)  # fmt: skip
    val_acc, val_f1 = [m["val_acc"] for m in result.history], [m["val_macro_f1"] for m in result.history]
    assert max(val_acc[:4]) > 0.6 and val_acc[-1] < 0.4  # it learned (chance is 1/3), then unlearned
    if keep_best:
        best = max(i for i, a in enumerate(val_f1) if a == max(val_f1))  # the latest of equals
        assert result.best_epoch == best < 4
        model, _ = load_weights(result.weights)
        images, labels = frames(96, seed=1)  # the val frames: the returned weights score the best epoch's val_acc
        probs = predict(model, images.numpy(), device="cpu").probs
        assert float((probs.argmax(1) == labels.numpy()).mean()) == pytest.approx(val_acc[best])
    else:
        assert result.best_epoch is None and accuracy(result.weights) < 0.4


def test_ema_returns_the_running_average_of_every_steps_weights():
    """One step per epoch: the plain run's weights after each step, averaged by hand with the warmup, are the EMA run's."""
    images, labels = frames(96, seed=0)
    batches = [{"image": images[i : i + 32], "label": labels[i : i + 32]} for i in range(0, 96, 32)]
    steps = []  # the plain run's weights and BatchNorm statistics after each of its steps
    plain = train(train_loader=batches, classes=CLASSES, cfg=tiny_cfg(epochs=6), steps_per_epoch=1,
                  on_epoch_model=lambda e, m: steps.append({k: v.clone() for k, v in m.state_dict().items()}))  # fmt: skip
    averaged = train(train_loader=batches, classes=CLASSES, cfg=tiny_cfg(epochs=6, ema=0.3), steps_per_epoch=1)
    expected = dict(steps[0])
    for t, state in enumerate(steps[1:], start=1):
        decay = min(0.3, (1 + t) / (10 + t))  # 0.18, 0.25, then 0.3
        for k, v in state.items():
            expected[k] = decay * expected[k] + (1 - decay) * v if v.is_floating_point() else v
    got, _ = load_weights(averaged.weights)
    last, _ = load_weights(plain.weights)
    for name, value in got.state_dict().items():
        assert torch.allclose(value, expected[name], atol=1e-6), name
    assert not torch.equal(got.state_dict()["stem.0.weight"], last.state_dict()["stem.0.weight"])


def test_ema_is_what_val_scores_and_a_resumed_run_keeps_it(tmp_path):
    cfg = tiny_cfg(epochs=2, ema=0.9)
    full = train(train_loader=loaders()[0], val_loader=loaders()[1], classes=CLASSES, cfg=cfg,
                 checkpoint_dir=tmp_path / "full")  # fmt: skip
    model, _ = load_weights(full.weights)
    images, labels = frames(96, seed=1)  # the val frames
    probs = predict(model, images.numpy(), device="cpu").probs
    assert float((probs.argmax(1) == labels.numpy()).mean()) == pytest.approx(full.history[-1]["val_acc"])

    def crash(epoch, metrics):
        raise Crash("simulated crash after epoch 0")

    with pytest.raises(Crash):
        train(train_loader=loaders()[0], val_loader=loaders()[1], classes=CLASSES, cfg=cfg,
              checkpoint_dir=tmp_path / "crashy", on_epoch_end=crash)  # fmt: skip
    resumed = train(train_loader=loaders()[0], val_loader=loaders()[1], classes=CLASSES, cfg=cfg,
                    checkpoint_dir=tmp_path / "crashy")  # fmt: skip
    assert resumed.resumed_from_epoch == 1
    a, _ = load_weights(full.weights)
    b, _ = load_weights(resumed.weights)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name
