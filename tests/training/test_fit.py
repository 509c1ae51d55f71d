"""A challenger's two phases: the select run on train (judged on val), then the refit on train + val,
whose weights are the challenger; each phase resumes from its own checkpoint."""

from __future__ import annotations

import pytest
import torch

from flywheel.config import load_settings
from flywheel.data import dataset
from flywheel.model import load_weights
from flywheel.store import open_store
from flywheel.training.fit import fit_version, with_val_as_train
from flywheel.training.train import TrainConfig
from tests.synthetic import separable_dataset

SPLITS = {"train": 96, "val": 64, "test": 32}


def _version(tmp_path, splits=SPLITS, **train):
    settings = load_settings(
        None,
        **{
            "classes": ["a", "b", "c"],
            "image_size": 16,
            "store.root": str(tmp_path / "store"),
            **{
                f"train.{k}": v
                for k, v in {
                    "epochs": 2,
                    "batch_size": 32,
                    "width": 8,
                    "depth": 1,
                    "device": "cpu",
                    "refit": True,
                    **train,
                }.items()
            },
        },
    )
    store = open_store(settings.store_root)
    manifest = separable_dataset(store, settings, per_split=splits)
    return store, settings, manifest, TrainConfig.from_settings(settings)


def _same_weights(a: bytes, b: bytes) -> bool:
    (ma, _), (mb, _) = load_weights(a), load_weights(b)
    return all(
        torch.equal(x, y)
        for x, y in zip(ma.state_dict().values(), mb.state_dict().values(), strict=True)
    )


def test_the_refit_trains_on_train_and_val_and_its_weights_are_the_challenger(tmp_path):
    store, settings, manifest, cfg = _version(tmp_path, keep_best=True)  # off by default: the last epoch
    seen = []
    fitted = fit_version(
        store, manifest, settings.classes, cfg, on_epoch_end=lambda *a: seen.append(a[:3])
    )
    assert (fitted.train_rows, fitted.val_rows, fitted.refit_rows) == (96, 64, 160)
    assert seen == [("select", 0, 2), ("select", 1, 2), ("refit", 0, 2), ("refit", 1, 2)]
    # the select run is scored on val and keeps its best epoch; the refit has no val left: its last epoch
    assert "val_acc" in fitted.select.history[-1] and fitted.select.best_epoch is not None
    assert "val_acc" not in fitted.refit.history[-1] and fitted.refit.best_epoch is None
    assert fitted.final is fitted.refit and not _same_weights(
        fitted.refit.weights, fitted.select.weights
    )
    assert (
        dataset.split_rows(manifest, "val") == 64
        and manifest["shards"] != with_val_as_train(manifest)["shards"]
    )
    moved = with_val_as_train(manifest)["shards"]
    assert [s["split"] for s in moved] == [
        {"val": "train"}.get(s["split"], s["split"]) for s in manifest["shards"]
    ]


@pytest.mark.parametrize(("refit", "splits"), [(False, SPLITS), (True, {"train": 96, "test": 32})])
def test_without_the_refit_or_without_val_rows_the_select_run_is_the_challenger(
    tmp_path, refit, splits
):
    store, settings, manifest, cfg = _version(tmp_path, splits, refit=refit)
    fitted = fit_version(store, manifest, settings.classes, cfg)
    assert fitted.refit is None and fitted.final is fitted.select and fitted.refit_rows == 0


def test_a_run_killed_in_the_refit_resumes_there_and_ends_as_an_unbroken_run_would(tmp_path):
    store, settings, manifest, cfg = _version(tmp_path)
    whole = fit_version(store, manifest, settings.classes, cfg, checkpoint_dir=tmp_path / "whole")

    def crash(phase, epoch, epochs, metrics):
        if phase == "refit" and epoch == 0:  # after the refit's first checkpoint
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        fit_version(
            store,
            manifest,
            settings.classes,
            cfg,
            checkpoint_dir=tmp_path / "ckpt",
            on_epoch_end=crash,
        )
    assert (tmp_path / "ckpt" / "checkpoint.pt").exists() and (
        tmp_path / "ckpt" / "refit" / "checkpoint.pt"
    ).exists()
    resumed = fit_version(store, manifest, settings.classes, cfg, checkpoint_dir=tmp_path / "ckpt")
    assert (
        resumed.select.resumed_from_epoch == 2 and resumed.refit.resumed_from_epoch == 1
    )  # nothing done twice
    assert _same_weights(resumed.refit.weights, whole.refit.weights)
    assert _same_weights(resumed.select.weights, whole.select.weights)
