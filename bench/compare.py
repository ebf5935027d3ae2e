"""Is one recipe better than another, and does it reach the goal? Two seed reports side by side.

    python -m bench.compare BASELINE.json OTHER.json [--goal 88]

Reads two reports of ``python -m bench.seeds`` and prints, for each, the mean and sample standard deviation
of the final test accuracy, then the difference of the means with a 95% confidence interval and p-value
(Welch's t-test, which does not assume equal spreads), the same for the seeds both ran (a paired t-test: on
one device a seed gives both recipes the same initial weights and augmentation stream), and for each
recipe the one-sided 95% lower bound of its mean against ``--goal``. With the 2-4 seeds a study affords,
a difference of a few tenths of a point is usually inside the interval: the script says so rather than
letting a ranking of means speak for itself.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from pipeline.cli import DefaultsHelpFormatter


def load_report(path) -> dict:
    path = Path(path)
    try:
        report = json.loads(path.read_text())
        accs = {int(r["seed"]): float(r["test_acc"]) for r in report["runs"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a bench.seeds report (a .json written by python -m bench.seeds): "
                         f"{type(e).__name__}: {e}") from None
    if not accs:
        raise ValueError(f"{path} holds no finished seed.")
    return {"path": str(path), "device": report.get("device", "?"), "recipe": report.get("recipe", "?"),
            "arch": report.get("arch", "?"), "accs": accs}


def welch(a: list[float], b: list[float]) -> dict | None:
    """Difference of means b - a with Welch's 95% interval and two-sided p-value; None under two seeds each."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = statistics.fmean(b) - statistics.fmean(a)
    if statistics.variance(a) == statistics.variance(b) == 0:       # scipy answers nan without any spread
        return {"diff": diff, "low": diff, "high": diff, "p": 0.0 if diff else 1.0}
    from scipy import stats
    res = stats.ttest_ind(b, a, equal_var=False)
    ci = res.confidence_interval(0.95)
    return {"diff": diff, "low": float(ci.low), "high": float(ci.high), "p": float(res.pvalue)}


def paired(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """b - a over the seeds both ran, with its 95% t interval; None under two common seeds."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = [b[s] - a[s] for s in seeds]
    m = statistics.fmean(d)
    if statistics.stdev(d) == 0:
        return {"seeds": seeds, "diff": m, "low": m, "high": m, "p": None}
    from scipy import stats
    res = stats.ttest_rel([b[s] for s in seeds], [a[s] for s in seeds])
    ci = res.confidence_interval(0.95)
    return {"seeds": seeds, "diff": m, "low": float(ci.low), "high": float(ci.high), "p": float(res.pvalue)}


def lower_bound(values: list[float]) -> float | None:
    """One-sided 95% lower confidence bound of the mean of ``values``; None for one value."""
    if len(values) < 2:
        return None
    if statistics.stdev(values) == 0:
        return statistics.fmean(values)
    from scipy import stats
    return float(stats.ttest_1samp(values, 0.0, alternative="greater").confidence_interval(0.95).low)


def compare(base: dict, other: dict, goal: float) -> list[str]:
    pct = lambda v: f"{100 * v:.2f}%"                                   # noqa: E731
    pts = lambda v: f"{100 * v:+.2f}"                                   # noqa: E731
    lines = []
    for name, r in (("baseline", base), ("other", other)):
        accs = list(r["accs"].values())
        sd = f" ± {100 * statistics.stdev(accs):.2f} (sample std)" if len(accs) > 1 else " (one seed)"
        lines.append(f"{name}: {r['path']}\n  {r['arch']} on {r['device']}; {r['recipe']}\n"
                     f"  seeds {', '.join(map(str, r['accs']))}: {', '.join(pct(v) for v in accs)}; "
                     f"mean {pct(statistics.fmean(accs))}{sd}")
    if base["device"] != other["device"]:
        lines.append(f"note: the two ran on different devices ({base['device']}; {other['device']}).")
    w = welch(list(base["accs"].values()), list(other["accs"].values()))
    if w is None:
        lines.append("difference of means: needs at least two seeds in each report.")
    else:
        verdict = "the interval holds 0: no measured difference" if w["low"] <= 0 <= w["high"] else \
            ("other is higher" if w["low"] > 0 else "other is lower")
        lines.append(f"other - baseline: {pts(w['diff'])} points, 95% interval [{pts(w['low'])}, {pts(w['high'])}] "
                     f"(Welch), p = {w['p']:.3f}: {verdict}")
    pr = paired(base["accs"], other["accs"]) if base["device"] == other["device"] else None
    if base["device"] != other["device"]:
        lines.append("same seeds: not paired, since a seed starts the same run only on the same device.")
    elif pr is not None:
        p = f", p = {pr['p']:.3f}" if pr["p"] is not None else ""
        lines.append(f"same seeds ({', '.join(map(str, pr['seeds']))}): {pts(pr['diff'])} points, 95% interval "
                     f"[{pts(pr['low'])}, {pts(pr['high'])}] (paired){p}")
    for name, r in (("baseline", base), ("other", other)):
        m, low = statistics.fmean(r["accs"].values()), lower_bound(list(r["accs"].values()))
        if low is None:
            lines.append(f"{name} against the goal {pct(goal)}: one seed, no bound.")
        else:
            verdict = ("above the goal with 95% confidence" if low >= goal else
                       "the mean reaches the goal, within its noise" if m >= goal else "the mean is below the goal")
            lines.append(f"{name} against the goal {pct(goal)}: mean {pct(m)}, one-sided 95% lower bound {pct(low)}: "
                         f"{verdict}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0],
                                 formatter_class=DefaultsHelpFormatter)
    ap.add_argument("baseline", help="a bench.seeds report (.json)")
    ap.add_argument("other", help="another bench.seeds report (.json)")
    ap.add_argument("--goal", type=float, default=88.0, help="test accuracy to reach, in percent")
    args = ap.parse_args(argv)
    if not 0 < args.goal <= 100:
        ap.error("--goal is a percentage between 0 and 100")
    try:
        base, other = load_report(args.baseline), load_report(args.other)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(compare(base, other, args.goal / 100)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
