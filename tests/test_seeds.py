"""bench.seeds: several seeds of the recipe, mean and spread, reuse of finished runs."""
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def seeds_cmd(*args):
    return [sys.executable, "-m", "bench.seeds", *map(str, args)]


def run(cmd, timeout=600):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_seeds_side_by_side_give_a_mean_and_spread_and_finished_runs_are_reused(mini_dir, tmp_path):
    (tmp_path / "big-batch.toml").write_text("batch_size = 256\n")
    cmd = seeds_cmd("--seeds", 0, 1, "--epochs", 1, "--data-dir", mini_dir, "--device", "cpu", "--jobs", 2,
                    "--runs-dir", tmp_path / "runs", "--out", tmp_path / "out", "--config", tmp_path / "big-batch.toml")
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    logs = sorted((tmp_path / "runs").glob("*.log"))
    assert len(logs) == 2 and all("epoch   1/1" in log.read_text() for log in logs), "each run logs to its own file"
    # side by side on a CPU, the runs share the cores instead of each taking all of them
    threads = max(1, (os.cpu_count() or 1) // 2) if "OMP_NUM_THREADS" not in os.environ else None
    if threads:
        want = f"device cpu ({threads} thread{'s' if threads > 1 else ''})"
        assert all(want in log.read_text() for log in logs), want
    # a recipe file names the runs and the report
    [report_path] = (tmp_path / "out").glob("*-seeds-big-batch-c1c2c3c4.json")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == \
        ["big-batch-c1c2c3c4-e1-seed0", "big-batch-c1c2c3c4-e1-seed1"]
    report = json.loads(report_path.read_text())
    assert [r["seed"] for r in report["runs"]] == [0, 1]
    metrics = [json.loads((Path(r["run"]) / "metrics.json").read_text()) for r in report["runs"]]
    accs = [m[0]["test_acc"] for m in metrics]
    assert [r["test_acc"] for r in report["runs"]] == accs
    assert report["summary"]["mean"] == pytest.approx(statistics.fmean(accs))
    assert report["summary"]["std"] == pytest.approx(statistics.stdev(accs))
    assert metrics[0][0]["train_loss"] != metrics[1][0]["train_loss"], "two seeds trained the same run"
    config = json.loads((Path(report["runs"][0]["run"]) / "config.json").read_text())
    assert config["args"]["batch_size"] == 256 and config["args"]["seed"] == 0
    assert "batch_size 256" in report["recipe"]
    md = report_path.with_suffix(".md").read_text()
    assert "| 1 |" in md and "Mean" in md

    again = run(cmd)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("already finished, reused") == 2
    assert json.loads(report_path.read_text())["summary"] == report["summary"]

    # a finished run of another recipe (as when a default of train.py changes: --whiten did) is not reused
    config_path = Path(report["runs"][1]["run"]) / "config.json"
    older = json.loads(config_path.read_text())
    older["recipe"]["values"]["whiten"] = False
    config_path.write_text(json.dumps(older))
    stale = run(cmd)
    assert stale.returncode == 2 and "Traceback" not in stale.stderr
    assert "seed 1:" in stale.stderr and "(--whiten False, not True)" in stale.stderr
    assert json.loads(report_path.read_text())["summary"] == report["summary"]      # the report is left as it was


@pytest.mark.parametrize("args, fragment", [
    (("--seeds", 1, 1), "each seed once"),
    (("--seeds", 1, "--", "--seed", 4), "set by bench.seeds itself"),
    (("--seeds", 1, "--config", "no-such-recipe.toml"), "recipe no-such-recipe.toml does not exist"),
])
def test_bad_options_are_refused_with_a_sentence(tmp_path, args, fragment):
    proc = run(seeds_cmd("--data-dir", tmp_path, "--out", tmp_path / "out", *args))
    assert proc.returncode == 2 and fragment in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_missing_data_is_refused_before_any_training(tmp_path):
    proc = run(seeds_cmd("--seeds", 0, "--data-dir", tmp_path / "absent", "--runs-dir", tmp_path / "runs",
                         "--out", tmp_path / "out"))
    assert proc.returncode == 2 and "convert CIFAR-10 first" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_runs_side_by_side_on_a_cpu_share_its_cores(monkeypatch):
    from bench.seeds import child_env
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert child_env("cpu", 2, cores=16)["OMP_NUM_THREADS"] == "8"
    assert child_env("cpu", 3, cores=2)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in child_env("cpu", 1, cores=16)       # one run takes every core
    assert "OMP_NUM_THREADS" not in child_env("cuda", 4, cores=16)      # GPU runs: torch's own default
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert child_env("cpu", 2, cores=16)["OMP_NUM_THREADS"] == "3"      # the user's setting wins
