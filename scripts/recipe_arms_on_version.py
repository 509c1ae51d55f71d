"""Recipe arms trained on the dataset versions of an existing flywheel home, scored (macro-F1) on its fixed
held-out set and on each version's test split (human and ground-truth labels only).

    python scripts/recipe_arms_on_version.py HOME VERSIONS "ARM;ARM..." OUT.json
    python scripts/recipe_arms_on_version.py /tmp/demo 4 "steps=300,refit=false;steps=200,refit=true" out.json

HOME is a FLYWHEEL_HOME a demo left (its store), VERSIONS comma-separated dataset versions (0: the
latest), each ARM comma-separated `train.` settings. Each arm trains through `fit.fit_version`, the
code a challenger trains with; one seed (train.seed), one line of JSON per arm and version.
"""
import json
import sys
import time

import numpy as np

from flywheel.config import load_settings
from flywheel.data import dataset
from flywheel.data.reader import load_arrays
from flywheel.evaluation.evaluate import confusion_matrix, macro_f1
from flywheel.model import load_weights
from flywheel.predict import predict
from flywheel.store import open_store
from flywheel.training.fit import fit_version
from flywheel.training.train import TrainConfig

home, versions, arms = sys.argv[1], [int(v) for v in sys.argv[2].split(",")], sys.argv[3].split(";")
settings = load_settings(None, **{"store.root": home})
store = open_store(home)
name = settings.dataset.name
fixed = store.read_json(f"datasets/{name}/fixed_set.json")
out = []
for v in versions:
    manifest = dataset.load_manifest(store, name, v) if v else dataset.load_manifest(store, name)
    fx, fy, _ = load_arrays(store, manifest, frame_ids=fixed["frame_ids"], image_size=settings.image_size)
    tx, ty, tm = load_arrays(store, manifest, split="test", image_size=settings.image_size)
    keep = np.array([s != "auto" for s in tm["label_source"]])
    tx, ty = tx[keep], ty[keep]
    for arm in arms:
        over = dict(kv.split("=") for kv in arm.split(","))
        s = load_settings(None, **{"store.root": home, **{f"train.{k}": (val == "true") if val in ("true", "false") else int(val) for k, val in over.items()}})
        cfg = TrainConfig.from_settings(s)
        t0 = time.perf_counter()
        fitted = fit_version(store, manifest, s.classes, cfg, geometric=s.geometric_aug)
        secs = time.perf_counter() - t0
        row = {"version": manifest["version"], "arm": arm, "seconds": round(secs, 1), "train_rows": fitted.train_rows}
        for label, res in (("final", fitted.final), ("select", fitted.select)):
            model, _ = load_weights(res.weights)
            for setname, (x, y) in (("fixed", (fx, fy)), ("test", (tx, ty))):
                p = predict(model, x, progress=False).probs.argmax(1)
                row[f"{label}_{setname}"] = round(macro_f1(confusion_matrix(p, y, len(s.classes))), 4)
        print(json.dumps(row), flush=True)
        out.append(row)
json.dump(out, open(sys.argv[4], "w"), indent=1)
