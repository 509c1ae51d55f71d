"""The champion: the model the fleet runs (`deploy/<model>/current.json`) and MLflow's `champion` alias.

Stages that need the champion load it here and score a batch's frames with it once; rollback
moves `current.json` and the alias back together.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnxruntime as ort
import pyarrow as pa

from flywheel import deploy
from flywheel.config import Settings
from flywheel.model_input import decode_images
from flywheel.predict import EMBEDDING_NAME, Predictions, predict
from flywheel.store import Store
from flywheel.tracking import CHAMPION, Tracker


@dataclass(frozen=True)
class Champion:
    """The deployed ONNX graph and its deploy manifest."""

    session: ort.InferenceSession
    manifest: dict

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def score(self, frames: pa.Table) -> Predictions:
        """Probabilities and embeddings for every row of a frames table (schema.FRAMES), in row order."""
        col = {c: frames.column(c).to_pylist() for c in ("frame_id", "image", "height", "width")}
        images = decode_images(col["image"], int(self.manifest["image_size"]), frame_ids=col["frame_id"],
                               heights=col["height"], widths=col["width"])  # fmt: skip
        embeds = EMBEDDING_NAME in {o.name for o in self.session.get_outputs()}
        return predict(self.session, images, embeddings=embeds)


def deployed(store: Store, settings: Settings) -> Champion | None:
    """The deployed champion, or None before the first deploy."""
    if deploy.current(store, settings.mlflow.model_name) is None:
        return None
    return Champion(*deploy.load_deployed(store, settings.mlflow.model_name))


def rollback(store: Store, settings: Settings, tracker: Tracker) -> tuple[str, str]:
    """Move current.json and the `champion` alias back to the previous champion; (from, to) versions."""
    frm, to = deploy.rollback(store, settings.mlflow.model_name)
    tracker.set_alias(CHAMPION, to.removeprefix("v"))
    return frm, to
