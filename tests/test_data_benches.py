"""The ingest, worker-start and loader benchmarks run end to end on tiny sizes (figures are never asserted: only
that every path did the same work and the result says so)."""

import json

import pytest
from click.testing import CliRunner

from flywheel.cli import main


def test_bench_ingest_times_one_and_two_processes_on_the_same_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    stored = tmp_path / "ingest.json"
    out = CliRunner().invoke(main, ["bench", "ingest", "--clips", "40", "--repeats", "1", "--workdir", str(tmp_path),
                                    "--out", str(stored)])  # fmt: skip
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout[out.stdout.index("{") :])
    assert json.loads(stored.read_text()) == result  # the result file is what was printed, with where it came from
    assert result["command"].startswith("flywheel bench ingest") and len(result["commit"]) == 40 and result["host"]
    one, two = result["ingest_1_process"], result["ingest_2_processes"]
    assert result["clips"] == 40 and one["frames"] == two["frames"] == result["frames"] > 0
    assert one["quarantined"] == two["quarantined"] == 0
    ceiling = result["ceiling"]
    assert ceiling["seconds"] == pytest.approx(ceiling["raw_read_s"] + ceiling["decode_check_s"], abs=0.0011)  # each rounded
    assert result["ceiling_2_processes_s"] > 0 and result["ceiling_speedup_2_processes"] > 0  # its forked half ran
    assert not list(tmp_path.glob("tmp*"))  # its store and the copies of the batch are gone


def test_bench_loader_runs_every_path_over_the_same_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    out = CliRunner().invoke(main, ["bench", "loader", "--frames", "128", "--workdir", str(tmp_path), "--out", "-"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout[out.stdout.index("{") :])
    rates = result["images_per_s_per_core"]
    assert set(rates) == {"decode_only", "ceiling", "shard_reader", "shard_reader_train_aug", "shard_reader_batched",
                          "shard_reader_batched_train_aug", "image_folder", "tar_stream"}  # fmt: skip
    assert all(v > 0 for v in rates.values()) and result["frames"] == 128
    assert set(result["batched_train_aug_wall_images_per_s"]) == {"0 workers", "2 workers"}
    assert not (tmp_path / "bench_loader").exists()


def test_bench_worker_start_checks_a_clip_each_way_in_a_dagster_step_under_both_mains(tmp_path):
    out = CliRunner().invoke(main, ["bench", "worker-start", "--repeats", "1", "--out", str(tmp_path / "w.json")])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout[out.stdout.index("{") :])["seconds_to_first_clip (best)"]
    assert len(result) == 2  # the console-script main and `python -m dagster`
    for ways in result.values():  # each way's worker returned an "ok" verdict for the clip (else the step fails)
        assert set(ways) == {"flywheel.workers, fork", "flywheel.workers, exec", "forkserver pool"} and all(s > 0 for s in ways.values())


def test_bench_launch_records_every_run_of_both_ways(tmp_path):
    out = tmp_path / "launch.json"
    run = CliRunner().invoke(main, ["bench", "launch", "--runs", "2", "--imports", "1", "--out", str(out)])
    assert run.exit_code == 0, run.output
    result = json.loads(out.read_text())
    assert result["runs_recorded"] == 2 * (2 + 1)  # two timed runs and a warm-up per way, all in the instance
    assert all(len(v) == 2 and min(v) > 0 for v in result["seconds_per_run"].values())
    assert result["cold_import_of_the_code_location_seconds"][0] > 0
