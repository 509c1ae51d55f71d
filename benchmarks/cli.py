"""`flywheel bench`: the benchmarks' command line; each prints its figures as JSON.

A command imports its benchmark (and with it torch, dagster or mlflow) only when it runs, so that
`flywheel --help` stays fast.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from flywheel.config import EngineSettings  # loaded by the CLI anyway

if TYPE_CHECKING:
    from flywheel.cli.base import Ctx

WORKDIR = click.option("--workdir", type=click.Path(file_okay=False), default=None,
                       help="Folder for the temporary files (default: the system's).")  # fmt: skip


# benchmarks/datasets.py's DATASETS, named here so that `--help` imports none of them (a test keeps them equal)
DATASET_NAMES = ("sim", "sim96", "geometry", "digits", "glyphs", "headway")


def _echo_json(result) -> None:
    click.echo(json.dumps(result, indent=2, default=str))


def _csv(kind):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            return tuple(kind(v.strip()) for v in value.split(",") if v.strip())
        except ValueError as e:
            raise click.BadParameter(f"{value!r}: {e}") from None

    return parse


def _provenance(result: dict) -> dict:
    """A result with where it came from: the command line, the commit (and whether the tree had
    uncommitted changes), the host and when."""
    import platform
    import subprocess
    import sys
    from datetime import UTC, datetime

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).parent).stdout.strip()  # the code's commit, wherever it runs
        except (OSError, subprocess.SubprocessError):
            return ""

    ctx = click.get_current_context(silent=True)
    if ctx is not None:  # the command and every parameter it ran with, defaults included
        words = ["flywheel", *ctx.command_path.split()[1:]]
        for param in ctx.command.params:
            value = ctx.params.get(param.name)
            if isinstance(value, bool):  # a flag: named when on, or by its --no- form
                words += [param.opts[0]] if value else param.secondary_opts[:1]
            elif value is not None and value != ():
                words.append(f"{max(param.opts, key=len)}={_word(value)}")
        command = " ".join(words)
    else:
        command = " ".join(sys.argv)
    return {"command": command, "commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "host": {"processor": platform.machine(), "system": platform.system(), "cpus": os.cpu_count(),
                     "python": platform.python_version()},
            "at": datetime.now(UTC).isoformat(timespec="seconds"), **result}  # fmt: skip


def _word(value) -> str:
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    return str(value)


def _result_file(name: str):
    """The --out option of a benchmark: its result file under benchmarks/results/ by default."""
    return click.option("--out", type=click.Path(dir_okay=False), default=f"benchmarks/results/{name}.json",
                        show_default=True, help="The JSON result file, with the command, commit and host ('-': none).")  # fmt: skip


def _emit(result: dict, out: str | None) -> dict:
    """A result with its provenance: printed as JSON and written to `out` (none for '-' or None)."""
    result = _provenance(result)
    _echo_json(result)
    if out and out != "-":
        _write(out, result)
        click.echo(f"written to {out}", err=True)
    return result


def _write(path: str | Path, content: dict | str) -> None:
    """Write a result (JSON) or table (text) through a temporary name, then rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else json.dumps(content, indent=1, default=str)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text.rstrip("\n") + "\n")
    tmp.replace(path)


@click.group()
def bench():
    """Benchmarks (figures and commands in BENCHMARKS.md).

    \b
    Example: flywheel bench recipe --quick
    """


@bench.command()
@click.option("--clips", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=4, show_default=True,
              help="Interleaved rounds (the order of the 1- and 2-process runs alternates); each figure is the best round.")
@_result_file("ingest")
@WORKDIR
@click.pass_obj
def ingest(obj: Ctx, clips: int, repeats: int, out: str, workdir: str | None):
    """Frames/s and MB/s from landing MCAP to frames Parquet, beside the raw MCAP read rate.

    \b
    Example: flywheel bench ingest --clips 40
    """
    from benchmarks.ingest import bench_ingest

    _emit(bench_ingest(obj.settings, clips=clips, workdir=workdir, repeats=repeats), out)


@bench.command("worker-start")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@_result_file("worker_start")
def worker_start(repeats: int, out: str):
    """Seconds to a cold ingest worker's first clip inside a Dagster step: flywheel.workers vs a
    forkserver pool, under a console-script main and under `python -m dagster`.

    \b
    Example: flywheel bench worker-start --repeats 1
    """
    from benchmarks.worker_start import bench_worker_start

    _emit(bench_worker_start(repeats=repeats), out)


@bench.command()
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True, help="Timed runs per way.")
@click.option("--imports", type=click.IntRange(min=1), default=3, show_default=True,
              help="Cold imports of the code location timed.")  # fmt: skip
@_result_file("launch")
def launch(runs: int, imports: int, out: str):
    """Seconds per run of the command line's driver (a run the UI can re-execute) against Dagster's
    execute_in_process, on a job that does nothing, and of the cold import a launched run pays first.

    \b
    Example: flywheel bench launch --runs 5 --out -
    """
    from benchmarks.launch import bench_launch

    _emit(bench_launch(runs=runs, imports=imports), out)


@bench.command()
@click.option("--reps", type=click.IntRange(min=10), default=200, show_default=True, help="Replayed turns per scenario.")
@click.option("--sizes", callback=_csv(int), default="100,300", show_default=True,
              help="Test frames per condition (and about as many per class).")  # fmt: skip
@click.option("--tolerances", callback=_csv(float), default="0.05,0.10", show_default=True,
              help="gate.slice_tolerance values of the new rule.")  # fmt: skip
@click.option("--min-frames", type=click.IntRange(min=1), default=100, show_default=True,
              help="gate.min_slice_frames of the new rule.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@_result_file("gate")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default="benchmarks/results/gate.md",
              show_default=True)  # fmt: skip
def gate(reps: int, sizes: tuple[int, ...], tolerances: tuple[float, ...], min_frames: int, seed: int, out: str,
         markdown_path: str):  # fmt: skip
    """The promotion gate's old and new rules on replayed turns with known effects: promotion rates
    per scenario, false-promotion and false-block rates, and the frames one slice needs.

    \b
    Example: flywheel bench gate --reps 50 --out /tmp/gate.json --markdown /tmp/gate.md
    """
    from benchmarks.gate_sim import bench_gate, markdown

    def row_done(row: dict) -> None:
        click.echo(f"{row['frames_per_condition']} frames, {row['scenario']}: "
                   + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k == "old" or k.startswith("new")), err=True)  # fmt: skip

    result = _emit(bench_gate(reps=reps, sizes=sizes, tolerances=tolerances, min_frames=min_frames, seed=seed,
                              on_row=row_done), out)  # fmt: skip
    table = markdown(result)
    _write(markdown_path, table)
    click.echo(table, err=True)


@bench.command("train-step")
@click.option("--sizes", callback=_csv(int), default="64,96", show_default=True, help="Input sides in pixels.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--heads", callback=_csv(str), default="both,spatial,coord,pool", show_default=True)
@click.option("--variant", "variants", multiple=True, metavar="NAME=KEY:VALUE,...",
              help="A model variant timed beside the default (repeatable): --variant wide=width:24,stem_pool:true.")
@click.option("--cnn", is_flag=True, help="Time the script CNN yardstick too.")
@_result_file("train_throughput_heads")
def train_step(sizes: tuple[int, ...], threads: int, heads: tuple[str, ...], variants: tuple[str, ...], cnn: bool,
               out: str | None):  # fmt: skip
    """Training-step throughput of the model per head and variant (forward, backward, AdamW), images/s.

    \b
    Example: flywheel bench train-step --out benchmarks/results/train_throughput_heads.json
             flywheel bench train-step --sizes 96 --heads both --threads 1 --cnn --variant stages4=stages:4
    """
    import yaml

    from benchmarks.train_step import bench_train_step

    parsed = {"default": {}}
    for text in variants:
        name, sep, body = text.partition("=")
        pairs = [p.partition(":") for p in body.split(",") if p.strip()]
        if not sep or not name.strip() or not pairs or any(not k.strip() or not c for k, c, _ in pairs):
            raise click.BadParameter(f"{text!r}: expected NAME=KEY:VALUE[,KEY:VALUE...]", param_hint="--variant")
        parsed[name.strip()] = {k.strip(): yaml.safe_load(v) for k, _, v in pairs}
    try:
        result = bench_train_step(sizes=sizes, heads=heads, threads=threads, variants=parsed, cnn=cnn)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--variant/--heads") from None
    _emit(result, out)


@bench.command()
@click.option("--frames", type=click.IntRange(min=64), default=2000, show_default=True)
@_result_file("loader")
@WORKDIR
@click.pass_obj
def loader(obj: Ctx, frames: int, out: str, workdir: str | None):
    """Images/s into uint8 tensors: shard reader vs ImageFolder-style files vs tar vs ceiling.

    \b
    Example: flywheel bench loader --frames 2000
    """
    from benchmarks.loader import bench_loader

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        result = bench_loader(tmp, frames=frames, image_size=obj.settings.image_size)
    _emit(result, out)


@bench.command()
@_result_file("append")
@WORKDIR
def append(out: str, workdir: str | None):
    """Time and bytes to add 10% new data as a dataset version, vs a full rebuild.

    \b
    Example: flywheel bench append
    """
    from benchmarks.loader import bench_append

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        result = bench_append(tmp)
    _emit(result, out)


def _overrides(ctx, param, values) -> dict:
    """`--set train.epochs=12` (repeatable) -> {"train.epochs": 12}: `flywheel.config.parse_overrides`."""
    from flywheel.config import ConfigError, parse_overrides

    try:
        return parse_overrides(values)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


@bench.command()
@click.option("--seeds", callback=_csv(int), default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option("--iterations", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--clips", type=click.IntRange(min=1), default=None,
              help="Clips uploaded per iteration.  [default: 48 on the road world, 96 on digits]")  # fmt: skip
@click.option("--recorded", type=click.IntRange(min=1), default=None,
              help="Clips the fleet records per iteration, the same in every arm; hard brakes and the shadow filter's "
                   "picks share the --clips uploads.  [default: twice --clips]")  # fmt: skip
@click.option("--label-budget", type=click.IntRange(min=1), default=None,
              help="Frames people label per iteration, in every arm.  [default: 100 on the road world, 200 on digits]")  # fmt: skip
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True,
              help="Training steps per challenger (train.steps; the demo's budget).")  # fmt: skip
@click.option("--arms", callback=_csv(str), default="random,engine", show_default=True,
              help="Comma-separated arms: random, engine, engine_novelty, engine_typical, mining, engine_scarce, "
                   "shadow_only, novelty_only, selection_only, typical_only, auto_labels_only, campaign_only, "
                   "scarce_only, engine_without_synth, synth_only (benchmarks/engine.py).")
@click.option("--ablation", is_flag=True,
              help="The main arms and one part of the engine each (shadow, novelty, selection, typical, auto labels, "
                   "campaign, scarce-slice mining, synthetic frames of scarce conditions).")
@click.option("--quick", is_flag=True, help="Smoke run: one seed, 2 tiny iterations (the models do not learn).")
@click.option("--world", type=click.Choice(["road", "digits"]), default="road", show_default=True,
              help="What the fleet sees: the road simulator, or handwritten digits under the same four conditions "
                   "(benchmarks/worlds.py), a dataset of another character.")
@click.option("--set", "overrides", multiple=True, callback=_overrides, metavar="KEY=VALUE",
              help="Settings override of every arm, a dotted key (repeatable): --set train.keep_best=false.")
@click.option("--out", type=click.Path(file_okay=False), default="benchmarks/results", show_default=True,
              help="Folder for NAME.json and NAME.png.")  # fmt: skip
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes, each running one (seed, arm) flywheel at a time with one torch thread.")
@click.option("--name", default="engine_ab", show_default=True,
              help="Result file name (without extension); --quick adds _quick. Until NAME.json is written, the "
                   "flywheels finished so far are kept in NAME.partial.json.")  # fmt: skip
@click.option("--resume", is_flag=True,
              help="Take the flywheels NAME.partial.json holds from an interrupted run of the same arms, seeds, world, "
                   "sizes and settings, and run only the others.")  # fmt: skip
@click.option("--synth-share", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=EngineSettings.model_fields["synthesize_share"].default, show_default=True,
              help="engine.synthesize_share of the arms with synthetic frames (engine, synth_only; by default the "
                   "flywheel's); --set would give them to the random arm too.")  # fmt: skip
@click.option("--reuse", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An earlier result (NAME.json or NAME.partial.json) of the same world, sizes and settings: take its "
                   "flywheels of this run's arms and seeds instead of running them again (a flywheel is deterministic "
                   "in its arm and seed), e.g. the random arm of a main run for an ablation. Repeatable.")  # fmt: skip
@WORKDIR
def engine(seeds: tuple[int, ...], iterations: int, clips: int | None, recorded: int | None, label_budget: int | None, steps: int, arms: tuple[str, ...],
           ablation: bool, quick: bool, world: str, overrides: dict, out: str, jobs: int, name: str, resume: bool,
           synth_share: float, reuse: tuple[str, ...], workdir: str | None):  # fmt: skip
    """The data engine (shadow mode + active selection + auto labels) vs random uploads and random
    labels, same human-label budget per iteration, over seeds: label-efficiency curves (PNG), the
    label ratio against its goal (JSON on stdout, a Markdown table on stderr).

    \b
    Example: flywheel bench engine --quick
    """
    from pathlib import Path

    from pydantic import ValidationError

    from benchmarks.engine import (
        ABLATION_ARMS,
        ARMS,
        MAIN_ARMS,
        QUICK,
        SYNTH_SHARE_UNRECORDED,
        bench_engine,
        comparable,
        markdown,
    )
    from flywheel import plots

    sizes = dict(seeds=seeds, iterations=iterations, clips_per_iteration=clips, recorded_per_iteration=recorded,
                 label_budget=label_budget, steps=steps)  # fmt: skip
    if quick:
        sizes = dict(QUICK)
    if ablation:
        arms = MAIN_ARMS + ABLATION_ARMS
    folder = Path(out)
    name = f"{name}_quick" if quick else name
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "random" not in arms:
        raise click.BadParameter(f"arms must include 'random' and come from {list(ARMS)}; got {list(arms)}",
                                 param_hint="--arms")  # fmt: skip
    partial, finished = folder / f"{name}.partial.json", {}
    config = {"world": world, "arms": list(arms), "seeds": list(sizes["seeds"]), "overrides": overrides,
              "synth_share": synth_share, **{k: v for k, v in sizes.items() if k != "seeds"}}  # fmt: skip
    config = json.loads(json.dumps(config))  # as the partial file holds it (tuples as lists)
    if resume:
        if not partial.exists():
            raise click.BadParameter(f"nothing to resume: {partial} does not exist", param_hint="--resume")
        earlier = json.loads(partial.read_text())
        earlier["config"].setdefault("synth_share", SYNTH_SHARE_UNRECORDED)
        differs = {k: (v, config[k]) for k, v in earlier["config"].items() if config.get(k) != v}
        if differs:
            raise click.BadParameter(f"{partial} is from another run: (there, here) {differs}", param_hint="--resume")
        finished = {a: {rows[0]["seed"]: rows for rows in runs} for a, runs in earlier["runs"].items()}
        click.echo(f"resumed from {partial}: {', '.join(f'{a} seeds {sorted(s)}' for a, s in finished.items())}", err=True)
    reused: dict[str, dict[str, list[int]]] = {}
    for path in reuse:
        try:
            earlier = json.loads(Path(path).read_text())
            there, here, earlier_runs = comparable(earlier["config"]), comparable(config), dict(earlier["runs"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise click.BadParameter(f"{path} is not a bench engine result ({type(e).__name__}: {e})",
                                     param_hint="--reuse") from None
        differs = {k: (v, here[k]) for k, v in there.items() if here[k] != v}
        if differs:
            raise click.BadParameter(f"{path} is from a run of other sizes or settings: (there, here) {differs}",
                                     param_hint="--reuse")  # fmt: skip
        # an arm with synthetic frames depends on their share too
        other_share = earlier["config"].get("synth_share", SYNTH_SHARE_UNRECORDED) != synth_share
        for arm, runs in earlier_runs.items():
            if other_share and arm in arms and "synth" in ARMS.get(arm, ()):
                click.echo(f"not reused from {path}: {arm} (synthetic frames at another share)", err=True)
                continue
            for rows in runs if arm in arms else ():
                if rows and rows[0]["seed"] in config["seeds"] and rows[0]["seed"] not in finished.get(arm, {}):
                    finished.setdefault(arm, {})[rows[0]["seed"]] = rows
                    reused.setdefault(Path(path).name, {}).setdefault(arm, []).append(rows[0]["seed"])
    if reused:
        click.echo(f"reused: {reused}", err=True)

    def flywheel_done(arm: str, seed: int, rows: list[dict]) -> None:  # the flywheels so far, kept beside NAME.json
        finished.setdefault(arm, {})[seed] = rows
        folder.mkdir(parents=True, exist_ok=True)
        _write(partial, _provenance({"partial": True, "config": config,
                                     "runs": {a: [by_seed[k] for k in sorted(by_seed)] for a, by_seed in finished.items()}}))  # fmt: skip

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        try:
            result = bench_engine(tmp, arms=arms, jobs=jobs, world=world, overrides=overrides, on_done=flywheel_done,
                                  synth_share=synth_share,
                                  finished={a: dict(by_seed) for a, by_seed in finished.items()},
                                  progress=lambda line: click.echo(line, err=True), **sizes)  # fmt: skip
        except ValidationError as e:  # a bad --set: the settings say which
            raise click.BadParameter(str(e), param_hint="--set") from None
    folder.mkdir(parents=True, exist_ok=True)
    result = _provenance(result)
    result["config"]["reused"] = reused  # the files some flywheels were taken from (they are in "resumed" too)
    _write(folder / f"{name}.json", result)
    partial.unlink(missing_ok=True)  # the whole result is in NAME.json now
    png = plots.label_efficiency_png(result["curves"], rare=result["config"]["rare"], chance=result["chance"],
                                     ratios=result["label_ratio"])  # fmt: skip
    (folder / f"{name}.png").write_bytes(png)
    _echo_json(result)
    click.echo(markdown(result), err=True)
    click.echo(f"written to {folder / name}.json and .png", err=True)


@bench.command()
@click.option("--pool-clips", callback=_csv(int), default="50,200", show_default=True,
              help="Training-set sizes in simulated clips of 8 frames (prefixes of one pool).")  # fmt: skip
@click.option("--test-clips", type=click.IntRange(min=1), default=60, show_default=True,
              help="Held-out clips, from another fleet seed.")  # fmt: skip
@click.option("--seeds", callback=_csv(int), default="0", show_default=True, help="Comma-separated seeds.")
@click.option("--steps", type=click.IntRange(min=1), default=600, show_default=True, help="Training steps per detector.")
@click.option("--image-size", type=click.IntRange(min=16), default=96, show_default=True,
              help="The detector's square input side (a multiple of 8).")  # fmt: skip
@click.option("--quick", is_flag=True, help="Smoke run: tiny pool, 20 steps (the detector does not learn at this size).")
@_result_file("detect")
@WORKDIR
def detect(pool_clips: tuple[int, ...], test_clips: int, seeds: tuple[int, ...], steps: int, image_size: int,
           quick: bool, out: str, workdir: str | None):  # fmt: skip
    """The CenterNet detector on the simulator's boxes, through the production ingest: COCO mAP on held-out
    clips (overall, per class, per condition) by training-set size, against the untrained model.

    \b
    Example: flywheel bench detect --quick --out -
    """
    from benchmarks.detect import bench_detect, markdown

    if quick:
        pool_clips, test_clips, steps, image_size = (4,), 4, 20, 32
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        try:
            result = bench_detect(tmp, pool_clips=pool_clips, test_clips=test_clips, seeds=seeds, steps=steps,
                                  image_size=image_size, progress=lambda line: click.echo(line, err=True))  # fmt: skip
        except ValueError as e:
            raise click.UsageError(str(e)) from None
    _emit(result, out)
    click.echo(markdown(result), err=True)


@bench.command()
@click.option("--clips", type=click.IntRange(min=1), default=60, show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=2, show_default=True)
@_result_file("cycle")
@click.pass_obj
def cycle(obj: Ctx, clips: int, iterations: int, out: str):
    """Latency from landing to deployed, per stage, in a fresh temporary FLYWHEEL_HOME.

    \b
    Example: flywheel bench cycle --iterations 2
    """
    from benchmarks.cycle import bench_cycle

    _emit(bench_cycle(obj, clips=clips, iterations=iterations), out)


def _partial_result(rows: list[dict]) -> dict:
    """The rows a `bench recipe` run has finished so far, summarized, with their provenance: what an
    interrupted run leaves beside its result file (OUT.partial.json) for `recipe-compare` to read."""
    from benchmarks.recipe import markdown, summarize

    summary = summarize(rows)
    return _provenance({"partial": True, "rows": rows, "summary": summary, "markdown": markdown(summary)})


def _row_done(row: dict) -> None:
    from benchmarks.recipe import ARMS

    arms = ", ".join(f"{a} {row[a]['accuracy']:.3f} ({row[a]['seconds']:.0f} s)" for a in ARMS if a in row)
    click.echo(f"{row['dataset']} {row['pool_frames']} frames, seed {row['seed']}: {arms}", err=True)


@bench.command()
@click.option("--datasets", callback=_csv(str), default=",".join(DATASET_NAMES), show_default=True,
              help="Comma-separated, of: " + ", ".join(DATASET_NAMES) + ".")  # fmt: skip
@click.option("--sizes", callback=_csv(int), default="1000,3000", show_default=True,
              help="Training pool sizes in frames (each a prefix of the next).")  # fmt: skip
@click.option("--heldout", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Held-out frames per dataset (clips apart from the training pool).")  # fmt: skip
@click.option("--seeds", callback=_csv(int), default="0,1,2", show_default=True,
              help="Each seed draws other frames and trains every arm with it.")  # fmt: skip
@click.option("--set", "overrides", multiple=True, callback=_overrides, metavar="KEY=VALUE",
              help="Settings override of the recipe, a dotted key (repeatable): "
                   "--set train.epochs=12.")  # fmt: skip
@click.option("--warm/--no-warm", default=False, show_default=True,
              help="Also train each later size warm-started from the previous one's model.")  # fmt: skip
@click.option("--yardsticks", callback=_csv(str), default="cnn,resnet18", show_default=True,
              help="Comma-separated, of: cnn, resnet18 (flywheel/training/baseline.py); they ignore --set.")  # fmt: skip
@click.option("--yardstick-epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--recipe/--no-recipe", "with_recipe", default=True, show_default=True,
              help="Train the recipe arm; --no-recipe reruns the yardsticks alone on the same seeded frames.")  # fmt: skip
@click.option("--quick", is_flag=True, help="Smoke run: tiny sizes, 1 epoch.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads per process (default: one per core, 1 with --jobs).")  # fmt: skip
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes, each training one (dataset, seed) at a time.")  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="The JSON result file ('-': none) [default: benchmarks/results/recipe.json, recipe_quick.json "
                   "with --quick]; until it is written, the rows finished so far are kept in OUT.partial.json")  # fmt: skip
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the Markdown table to this file.")  # fmt: skip
@WORKDIR
@click.pass_obj
def recipe(obj: Ctx, datasets: tuple[str, ...], sizes: tuple[int, ...], heldout: int, seeds: tuple[int, ...],
           overrides: dict, warm: bool, yardsticks: tuple[str, ...], yardstick_epochs: int, with_recipe: bool,
           quick: bool, threads: int | None, jobs: int, out: str | None, markdown_path: str | None,
           workdir: str | None):  # fmt: skip
    """The default training recipe vs two yardsticks (the classic script CNN, ResNet-18), same frames,
    same held-out clips, per dataset, size and seed, with the mean and 95 % interval over seeds;
    JSON on stdout, the Markdown table on stderr.

    \b
    Example: flywheel bench recipe --jobs 2 --datasets geometry,digits --out benchmarks/results/recipe.json
    """
    from benchmarks.recipe import bench_recipe

    out = out or f"benchmarks/results/recipe{'_quick' if quick else ''}.json"
    partial = None if out == "-" else Path(out).with_suffix(".partial.json")
    done: list[dict] = []

    def row_done(row: dict) -> None:  # each finished row at once, and the rows so far kept beside OUT
        _row_done(row)
        done.append(row)
        if partial is not None:
            _write(partial, _partial_result(done))

    try:
        result = bench_recipe(workdir, datasets=datasets, sizes=sizes, heldout=heldout, seeds=seeds,
                              config=obj.config, overrides=overrides, quick=quick, warm=warm,
                              yardsticks=yardsticks, yardstick_epochs=yardstick_epochs,
                              threads=threads, jobs=jobs, recipe=with_recipe,
                              on_row=row_done)  # fmt: skip
    except ValueError as e:  # an unknown dataset, a bad override: say which
        raise click.ClickException(str(e)) from None
    _emit(result, out)
    if partial is not None:
        partial.unlink(missing_ok=True)  # the whole result is in OUT now
    click.echo(result["markdown"], err=True)
    if markdown_path:
        _write(markdown_path, result["markdown"])


@bench.command("recipe-compare")
@click.argument("variants", nargs=-1, required=True, metavar="LABEL=RESULT.json...")
@click.option("--base", required=True, help="The label whose recipe arm the others are compared with.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="The JSON result file.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the Markdown table to this file.")  # fmt: skip
@click.option("--last-epoch", is_flag=True,
              help="Score every arm at its last epoch (its curve's last point), also rows run with train.keep_best on.")
def recipe_compare(variants: tuple[str, ...], base: str, out: str, markdown_path: str | None, last_epoch: bool):
    """`bench recipe` results of recipe variants (other --set values) side by side, row by row on the
    same seeded frames: accuracy, the paired difference from BASE's recipe, the difference from the CNN
    (a variant run without yardsticks is set against BASE's CNN on the same frames, marked *) and
    seconds over the CNN's of the same run. A label given more than once takes the rows of all its
    files (runs of one variant on other datasets, sizes or seeds).

    \b
    Example: flywheel bench recipe-compare steps800=recipe.json steps200=recipe_steps200.json --base steps800 \\
        --out /tmp/compare.json
    """
    from benchmarks.recipe import compare

    loaded: dict[str, dict] = {}
    sources: dict[str, list[str]] = {}
    for v in variants:
        label, sep, path = v.partition("=")
        if not sep or not label or not path:
            raise click.BadParameter(f"{v!r}: expected LABEL=RESULT.json", param_hint="VARIANTS")
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise click.ClickException(f"{path}: {e}") from None
        rows = [r for r in result.get("rows", []) if "dataset" in r and "size" in r]
        if label in loaded:
            have = {(r["dataset"], r["size"], r["seed"]) for r in loaded[label]["rows"]}
            if twice := sorted(f"{d} {z} seed {s}" for d, z, s in have & {(r["dataset"], r["size"], r["seed"]) for r in rows}):
                raise click.ClickException(f"{path}: {label} already has {', '.join(twice)} from {sources[label][0]}")
            loaded[label]["rows"] += rows
        else:
            loaded[label] = {**result, "rows": rows}
        sources.setdefault(label, []).append(path)
    try:
        result = compare(loaded, base, last_epoch=last_epoch)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    result["sources"] = sources
    _emit(result, out)
    click.echo(result["markdown"], err=True)
    if markdown_path:
        _write(markdown_path, result["markdown"])


@bench.command("recipe-merge")
@click.argument("base", type=click.Path(exists=True, dir_okay=False))
@click.argument("reruns", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--arm", default="resnet18", show_default=True, help="The arm the reruns replace.")
@click.option("--add", "additions", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A run of further seeds whose rows join the result with all their arms (repeatable).")  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="The merged JSON result file.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the merged Markdown table to this file.")  # fmt: skip
def recipe_merge(base: str, reruns: tuple[str, ...], arm: str, additions: tuple[str, ...], out: str,
                 markdown_path: str | None):
    """A `bench recipe` result (BASE) with one arm taken from reruns of it on the same seeded frames
    (`bench recipe --no-recipe`, RERUNS), matched by dataset, size and seed and refused where the
    held-out frames differ, and with the rows of runs of further seeds added (--add); summary and
    table recomputed.

    \b
    Example: flywheel bench recipe-merge benchmarks/results/recipe.json rerun.json --out merged.json

    \b
    Example: flywheel bench recipe-merge merged.json --add seeds34.json --out five_seeds.json
    """
    from benchmarks.recipe import add_rows, merge_rerun

    if not reruns and not additions:
        raise click.UsageError("nothing to merge: give RERUNS, --add or both")
    read = lambda path: json.loads(Path(path).read_text())  # noqa: E731
    try:
        result = merge_rerun(read(base), [read(r) for r in reruns], arm) if reruns else read(base)
        if additions:
            result = add_rows(result, [read(a) for a in additions])
            result["added"]["files"] = list(additions)
    except (ValueError, KeyError) as e:
        raise click.ClickException(f"cannot merge: {e}") from None
    if reruns:
        result["merged"]["files"] = [base, *reruns]
    _emit(result, out)
    click.echo(result["markdown"], err=True)
    if markdown_path:
        _write(markdown_path, result["markdown"])


@bench.command()
@click.option("--frames", type=click.IntRange(min=64), default=2000, show_default=True,
              help="Simulator frames the model trains on.")  # fmt: skip
@click.option("--widths", callback=_csv(int), default="16,32", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads while training (default: one per core).")  # fmt: skip
@click.option("--set", "overrides", multiple=True, callback=_overrides, metavar="KEY=VALUE",
              help="Settings override (repeatable): --set train.steps=300.")  # fmt: skip
@_result_file("int8")
@WORKDIR
def int8(frames: int, widths: tuple[int, ...], threads: int | None, overrides: dict, out: str, workdir: str | None):
    """The deployed model in fp32 and int8: size, latency at batch 1 and 32, accuracy and per-condition
    drop on held-out frames; JSON on stdout, a Markdown table on stderr.

    \b
    Example: flywheel bench int8 --frames 2000 --widths 16,32 --threads 1
    """
    import torch

    from benchmarks.int8 import bench_int8

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        result = bench_int8(workdir, frames=frames, widths=widths, overrides=overrides)
    finally:
        torch.set_num_threads(before)
    _emit(result, out)
    click.echo(result["markdown"], err=True)


@bench.command("label-errors")
@click.option("--dataset", type=click.Choice(["loop", *DATASET_NAMES]), default="loop",
              show_default=True,
              help="loop: the flywheel on the built-in simulator, the team answering the queue; another: that "
                   "dataset of `flywheel bench recipe`, a champion at the defaults checking a disjoint stream.")  # fmt: skip
@click.option("--batches", type=click.IntRange(min=2), default=3, show_default=True,
              help="loop: fleet batches; the first trains the champion, the others are checked.")  # fmt: skip
@click.option("--clips", type=click.IntRange(min=1), default=250, show_default=True, help="loop: clips per batch.")
@click.option("--label-budget", type=click.IntRange(min=1), default=1000, show_default=True, help="loop only.")
@click.option("--frames", type=click.IntRange(min=16), default=1000, show_default=True,
              help="A dataset: frames the champion trains on, and frames whose labels are checked.")  # fmt: skip
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Share of the labeling team's answers that are wrong.")  # fmt: skip
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True,
              help="loop: train.steps of each champion (300: the demo's budget; a dataset trains at the defaults).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="The JSON result file ('-': none) [default: benchmarks/results/label_errors_<dataset>_seed<seed>.json]")
@WORKDIR
def label_errors(dataset: str, batches: int, clips: int, label_budget: int, frames: int, error_rate: float,
                 steps: int, seed: int, out: str | None, workdir: str | None):  # fmt: skip
    """Precision and recall of the label-error check against errors the simulated labeling team makes at
    a known rate, per minimum score.

    \b
    Example: flywheel bench label-errors --batches 3 --error-rate 0.1
             flywheel bench label-errors --dataset digits
    """
    from benchmarks.label_errors import bench_label_errors, bench_label_errors_frames

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        if dataset == "loop":
            result = bench_label_errors(tmp, batches=batches, clips=clips, label_budget=label_budget,
                                        error_rate=error_rate, steps=steps, seed=seed)  # fmt: skip
        else:
            result = bench_label_errors_frames(dataset, tmp, frames=frames, error_rate=error_rate, seed=seed)
    _emit(result, out or f"benchmarks/results/label_errors_{dataset}_seed{seed}.json")


@bench.command()
@click.option("--sizes", callback=_csv(int), default="10000,100000", show_default=True,
              help="Clips waiting in landing, comma-separated; a fresh bucket each.")  # fmt: skip
@click.option("--max-clips", type=click.IntRange(min=1), default=500, show_default=True,
              help="sensor.max_clips: clips a batch takes.")  # fmt: skip
@click.option("--ticks", type=click.IntRange(min=1), default=3, show_default=True,
              help="Steady ticks after the first (each commits a batch).")  # fmt: skip
@click.option("--threads", type=click.IntRange(min=1), default=8, show_default=True,
              help="Parallel uploads filling landing.")  # fmt: skip
@click.option("--list-pages", type=click.IntRange(min=1), default=None,
              help="sensor.max_list_pages: landing pages a tick lists at most (default: the config's).")  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="JSON result file (default: benchmarks/results/sensor_tick.json).")  # fmt: skip
def sensor(sizes: tuple[int, ...], max_clips: int, ticks: int, threads: int, list_pages: int | None,
           out: str | None):  # fmt: skip
    """Seconds and S3 requests of a fresh-data sensor tick with many clips waiting, on moto's S3
    server: the landing scan (first and steady ticks) vs listing all of landing, and a tick below the
    threshold with the rest ingested, with and without the page budget; JSON on stdout and in the
    result file, a Markdown table on stderr.

    \b
    Example: flywheel bench sensor --sizes 10000,100000
    """
    from pathlib import Path

    from benchmarks.sensor import RESULTS, bench_sensor

    def row_done(row: dict) -> None:
        click.echo(f"{row['clips']} clips, {row['tick']}: {row['seconds']:.2f} s", err=True)

    try:
        result = bench_sensor(sizes=sizes, max_clips=max_clips, steady_ticks=ticks, threads=threads,
                              list_pages=list_pages, on_row=row_done)  # fmt: skip
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    _emit(result, str(Path(out) if out else RESULTS))
    click.echo(result["markdown"], err=True)


@bench.group()
def scale():
    """Production profile (production/): Celery workers and DDP ranks, 1 vs 2.

    \b
    Example: flywheel bench scale ddp --clips 48
    """


@scale.command("ingest")
@click.option("--pg", default="postgresql+psycopg2://postgres@127.0.0.1:5432", show_default=True,
              help="PostgreSQL server; each worker count gets a fresh database on it.")  # fmt: skip
@click.option("--broker", default="pyamqp://guest:guest@127.0.0.1:5672//", show_default=True,
              help="Celery broker (RabbitMQ or Redis).")  # fmt: skip
@click.option("--batches", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--clips", type=click.IntRange(min=1), default=6, show_default=True,
              help="Clips per batch.")  # fmt: skip
@_result_file("scale_ingest")
def scale_ingest(pg: str, broker: str, batches: int, clips: int, out: str):
    """Fleet batches ingested through Celery with 1 and 2 workers: step span, speed-up.

    \b
    Example: flywheel bench scale ingest --batches 4
    """
    from benchmarks.scale import bench_celery_ingest

    _emit(bench_celery_ingest(pg=pg, broker=broker, batches=batches, clips=clips), out)


@scale.command("ddp")
@click.option("--clips", type=click.IntRange(min=1), default=96, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=4, show_default=True)
@_result_file("scale_ddp")
def scale_ddp(clips: int, epochs: int, out: str):
    """Training images/s with torchrun 1 and 2 ranks on CPU (gloo).

    \b
    Example: flywheel bench scale ddp --epochs 2
    """
    from benchmarks.scale import bench_ddp

    _emit(bench_ddp(clips=clips, epochs=epochs), out)
