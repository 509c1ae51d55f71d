"""The one predictor: probabilities (and embeddings) for a torch model or an ONNX graph, batched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flywheel.deployment import deploy
from flywheel.model import ModelConfig, build_model, load_weights, save_weights
from flywheel.predict import predict, softmax
from flywheel.progress import shown

CLASSES = ["a", "b", "c"]
SIZE = 16


def _model_and_images(n=10, seed=3):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(num_classes=3, image_size=SIZE, width=8, depth=1))
    images = np.random.default_rng(seed).integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8)
    return model, images


def test_probabilities_independent_of_batch_size_and_mode_restored():
    model, images = _model_and_images()
    model.train()
    probs = predict(model, images, batch_size=4).probs
    assert model.training  # mode restored
    assert probs.shape == (10, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(predict(model, images, batch_size=10).probs, probs, atol=1e-6)
    again, _ = load_weights(save_weights(model, model.cfg, CLASSES))  # save/load does not change the answer
    np.testing.assert_allclose(predict(again, images).probs, probs, atol=1e-6)


def test_bad_input_is_named():
    model, images = _model_and_images()
    with pytest.raises(ValueError, match="uint8"):
        predict(model, images.astype(np.float32))
    with pytest.raises(ValueError, match="empty"):
        predict(model, images[:0])
    with pytest.raises(ValueError, match="batch_size"):
        predict(model, images, batch_size=0)


def test_softmax_is_stable_for_large_logits():
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(p, [[1.0, 0.0], [0.5, 0.5]], atol=1e-6)


@pytest.mark.parametrize("graph", ["torch", "onnx"])
def test_progress_bars_change_no_answer_and_show_only_when_asked(graph, capsys):
    """A bar on stderr when asked, or inside `shown()` (the command line's runs); else quiet, as the
    Dagster assets must be. The probabilities and embeddings are the same either way."""
    model, images = _model_and_images()
    if graph == "onnx":
        model = deploy.session(deploy.export_onnx(model, image_size=SIZE))
    quiet = predict(model, images, batch_size=4, embeddings=True)
    assert capsys.readouterr().err == ""
    shown_bar = predict(model, images, batch_size=4, embeddings=True, progress=True)
    assert "predict" in capsys.readouterr().err
    with shown():
        inside = predict(model, images, batch_size=4, embeddings=True)
        assert "predict" in capsys.readouterr().err
        predict(model, images, progress=False)  # an explicit False wins
        assert capsys.readouterr().err == ""
    predict(model, images)  # off again after the block
    assert capsys.readouterr().err == ""
    for p in (shown_bar, inside):
        np.testing.assert_array_equal(p.probs, quiet.probs)
        np.testing.assert_array_equal(p.embeddings, quiet.embeddings)
