"""bench.compare: two seed reports, the difference of their means with its uncertainty, and the goal."""
import json

import pytest
from scipy import stats

from bench.compare import paired, welch
from conftest import run_in_process


def report(path, accs, device="cpu"):
    runs = [{"seed": s, "run": f"runs/x-seed{s}", "test_acc": a, "train_acc": 0.8, "epoch_time_s": 1.0}
            for s, a in accs.items()]
    path.write_text(json.dumps({"device": device, "arch": "c1c2c3c4", "recipe": "r", "runs": runs}))
    return path


def compare_cli(*args):
    from bench.compare import main
    return run_in_process(main, *args)


def test_welch_and_paired_intervals_agree_with_scipy():
    a, b = [0.878, 0.8802, 0.8813, 0.8759], [0.8799, 0.8821, 0.8830]
    w = welch(a, b)
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert w["p"] == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (w["low"], w["high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    pr = paired({0: 0.878, 1: 0.8802, 2: 0.8813, 3: 0.8759}, {0: 0.8799, 1: 0.8830, 5: 0.883})
    assert pr["seeds"] == [0, 1]                                    # seed 5 has no partner
    ref = stats.ttest_rel([0.8799, 0.8830], [0.878, 0.8802])
    assert pr["diff"] == pytest.approx(0.00235) and pr["p"] == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (pr["low"], pr["high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert welch([0.88], b) is None and paired({0: 0.1}, {1: 0.2}) is None


def test_overlapping_recipes_are_called_no_difference_and_clear_ones_a_difference(tmp_path):
    base = report(tmp_path / "a.json", {0: 0.878, 1: 0.8802, 2: 0.8813, 3: 0.8759})
    close = report(tmp_path / "b.json", {0: 0.8799, 1: 0.8790, 2: 0.8812}, device="gpu")
    proc = compare_cli(base, close)
    assert proc.returncode == 0, proc.stderr
    assert "no measured difference" in proc.stdout and "different devices" in proc.stdout
    assert "not paired" in proc.stdout and "same seeds (" not in proc.stdout
    same_device = report(tmp_path / "b2.json", {0: 0.8799, 1: 0.8790, 2: 0.8812})
    assert "same seeds (0, 1, 2)" in compare_cli(base, same_device).stdout
    far = report(tmp_path / "c.json", {0: 0.8901, 1: 0.8912, 2: 0.8897})
    proc = compare_cli(base, far, "--goal", 88)
    assert "other is higher" in proc.stdout
    assert "other against the goal 88.00%: mean 89.03%" in proc.stdout and "above the goal with 95%" in proc.stdout
    assert "baseline against the goal 88.00%: mean 87.89%" in proc.stdout and "below the goal" in proc.stdout


def test_bad_reports_get_a_sentence(tmp_path):
    good = report(tmp_path / "a.json", {0: 0.878, 1: 0.88})
    (tmp_path / "bad.json").write_text("{\"runs\": [{\"seed\": 0}]}")
    for other in (tmp_path / "bad.json", tmp_path / "missing.json"):
        proc = compare_cli(good, other)
        assert proc.returncode == 2 and "is not a bench.seeds report" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert compare_cli(good, good, "--goal", 120).returncode == 2
