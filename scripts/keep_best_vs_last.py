"""What `train.keep_best` did in stored `bench recipe` results: the held-out accuracy of the kept
(best val epoch) model against the last epoch's, read from each recipe row's curve (its last point is
the last epoch's model, scored on the same held-out frames). No training: only result files.

    python scripts/keep_best_vs_last.py OUT.json RESULT.json [RESULT.json ...]

Rows of runs that refit on train + val or set keep_best themselves are left out (their kept model
is not the select run's best epoch). Prints and writes, per file and pool size and over all rows:
the rows, the mean of (last - kept), a 95 % t-interval, and how many rows the last epoch was
above, level with and below the kept one.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats


def summary(diffs: list[float]) -> dict:
    d = np.asarray(diffs)
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
    return {"rows": len(d), "mean_last_minus_kept": round(float(d.mean()), 4),
            "ci95_half": None if half is None else round(half, 4),
            "last_above": int((d > 0).sum()), "level": int((d == 0).sum()), "last_below": int((d < 0).sum())}  # fmt: skip


def per_dataset(rows: list[dict]) -> list[dict]:
    """Means over seeds per file, dataset and pool size: kept, last and (where the run had it) the script CNN."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["file"], r["dataset"], r["size"])].append(r)
    out = []
    for (name, data, size), rs in sorted(groups.items()):
        mean = {k: round(float(np.mean([r[k] for r in rs])), 4) for k in ("kept", "last")}
        cnn = [r["cnn"] for r in rs if r["cnn"] is not None]
        out.append({"file": name, "dataset": data, "size": size, "seeds": len(rs), **mean,
                    "cnn": round(float(np.mean(cnn)), 4) if len(cnn) == len(rs) else None})  # fmt: skip
    return out


def main(out: Path, files: list[Path]) -> dict:
    groups, every, rows = defaultdict(list), [], []
    for f in files:
        result = json.loads(f.read_text())
        train = result.get("config", {}).get("train", {})
        if train.get("refit") or train.get("keep_best") is False:
            continue
        for row in result["rows"]:
            arm = row.get("recipe") or {}
            if not arm.get("curve"):
                continue
            last, kept = arm["curve"][-1][1], arm["accuracy"]
            diff = round(last - kept, 4)
            groups[(f.name, row["size"])].append(diff)
            every.append(diff)
            rows.append({"file": f.name, "dataset": row["dataset"], "size": row["size"], "seed": row["seed"],
                         "kept": kept, "last": last, "best_epoch": arm.get("best_epoch"), "epochs": arm.get("epochs"),
                         "cnn": (row.get("cnn") or {}).get("accuracy")})  # fmt: skip
    report = {"command": "python scripts/keep_best_vs_last.py " + " ".join([str(out), *map(str, files)]),
              "groups": [{"file": name, "size": size, **summary(d)} for (name, size), d in sorted(groups.items())],
              "all": summary(every), "datasets": per_dataset(rows), "rows": rows}  # fmt: skip
    for g in report["groups"]:
        print(f"{g['file']} @ {g['size']}: last - kept {g['mean_last_minus_kept']:+.4f} ± {g['ci95_half']} "
              f"({g['last_above']} above, {g['level']} level, {g['last_below']} below, {g['rows']} rows)")  # fmt: skip
    print(f"all: {report['all']}")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out)
    return report


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
