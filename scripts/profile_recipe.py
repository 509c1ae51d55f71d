"""Where a recipe training's time goes: one `bench recipe` dataset at one pool size and seed, trained
through the pipeline's stages in one process of one torch thread under cProfile; writes the run's
seconds and the profile's top functions (by time inside them) as JSON.

    python scripts/profile_recipe.py DATASET POOL OUT.json [KEY=VALUE ...]
    python scripts/profile_recipe.py digits 1500 benchmarks/results/profile_recipe_digits.json

KEY=VALUE are dotted settings as `bench recipe --set` takes them (e.g. train.steps=200).
"""

import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks.datasets import make_frames
from benchmarks.recipe import add_batch, recipe_settings, train_recipe
from flywheel.store import store_for

name, pool, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
overrides = {"train.seed": 0}
for kv in sys.argv[4:]:
    key, _, value = kv.partition("=")
    overrides[key] = yaml.safe_load(value)
torch.set_num_threads(1)
with tempfile.TemporaryDirectory() as root:
    settings = recipe_settings(name, Path(root) / "home", overrides=overrides)
    store = store_for(settings)
    manifest, _ = add_batch(store, settings, make_frames(name, frames=pool, seed=0), "b0001")
    profile, t0 = cProfile.Profile(), time.perf_counter()
    profile.enable()
    fitted, _ = train_recipe(store, settings, manifest)
    profile.disable()
    seconds = time.perf_counter() - t0
stats = pstats.Stats(profile).stats  # {(file, line, function): (calls, primitive calls, tottime, cumtime, callers)}
top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
result = {
    "command": "python " + " ".join(sys.argv), "dataset": name, "pool": pool, "overrides": overrides,
    "seconds": round(seconds, 1), "epochs": len(fitted.final.history),
    "top": [{"function": f"{Path(f).name}:{line}({fn})", "calls": calls, "seconds": round(tottime, 2),
             "share": round(tottime / seconds, 3)} for (f, line, fn), (_, calls, tottime, _, _) in top],
}  # fmt: skip
out.write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps(result["top"][:6], indent=1))
