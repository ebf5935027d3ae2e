"""Train a recipe with several seeds and report the mean and spread of the final test accuracy.

    python -m bench.seeds --seeds 0 1 2 --data-dir data/cifar10 [--config RECIPE.toml] [--arch c1c2c3c4]
                          [--epochs 30] [--jobs 3] [--runs-dir runs/seeds] [--out bench/results]
                          [-- MORE TRAIN.PY OPTIONS]

Each seed trains with train.py in its own run folder, RUNS_DIR/<recipe>-<arch>-e<epochs>-seed<N>, named after
the recipe file (``default`` without --config): a finished run is reused and an interrupted one resumed, so
after a crash or Ctrl-C the same command carries on. A finished run is reused only if the recipe its
config.json records is this command's; options after '--' do not name the folder, so a recipe of one's own
belongs in a recipe file. ``--jobs N`` trains N seeds side by side, each logging to RUNS_DIR/<run>.log (on a GPU
one run of this small net does not fill the card). After every seed the report is rewritten (atomically) with
the seeds finished so far: OUT/<date>-<device>-seeds-<recipe>-<arch>.json and .md, one row per seed from its
metrics.json, then the mean, the sample standard deviation, min and max. One seed says little at the level of a
few tenths of a point.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from model.checkpoint import write_text_atomic
from pipeline.cli import DefaultsHelpFormatter

ROOT = Path(__file__).resolve().parents[1]


def finished(run: Path, epochs: int) -> list | None:
    """The run's metrics if it completed `epochs` epochs, else None."""
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if len(metrics) >= epochs else None


def recipe_mismatch(run: Path, intended: dict) -> str | None:
    """How the finished ``run``'s recorded recipe differs from ``intended`` (train.py's parsed arguments), or
    None when it is the same."""
    from trainer import recipe
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return "its config.json is missing or unreadable"
    before = recipe.recorded(config) if isinstance(config, dict) else None
    if before is None:
        return "it was trained before runs recorded their recipe"
    return "; ".join(recipe.differences(before, recipe.resolved(intended))) or None


def row(seed: int, run: Path, metrics: list, epochs: int) -> dict:
    last = metrics[epochs - 1]
    return {"seed": seed, "run": str(run), "test_acc": last["test_acc"], "train_acc": last["train_acc"],
            "epoch_time_s": statistics.median(m["epoch_time_s"] for m in metrics[:epochs])}


def child_env(device: str, jobs: int, cores: int | None = None) -> dict:
    """The environment of each train.py: on a CPU, runs side by side share the cores (OMP_NUM_THREADS =
    cores // jobs) instead of each starting a thread per core. On this project's 2-core CPU, two 1-thread
    training steps side by side did 199 + 199 img/s against 360 img/s for one 2-thread step. A
    OMP_NUM_THREADS the user set is kept."""
    env = dict(os.environ)
    if device == "cpu" and jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (cores or os.cpu_count() or 1) // jobs))
    return env


def wait_any(running: dict) -> int:
    """The key of the first of the running processes to exit (polls: subprocess has no wait-for-any)."""
    while True:
        for key, (proc, _) in running.items():
            if proc.poll() is not None:
                return key
        time.sleep(0.5)


def summarize(rows: list[dict]) -> dict:
    accs = [r["test_acc"] for r in rows]
    return {"n": len(accs), "mean": statistics.fmean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else None,
            "min": min(accs), "max": max(accs)}


def markdown(report: dict) -> str:
    s = report["summary"]
    pct = lambda v: f"{100 * v:.2f}%"                               # noqa: E731
    lines = [f"# {report['arch']}: {report['epochs']} epochs, {s['n']} seed(s) on {report['device']}", "",
             f"{report['date']}; `{report['command']}`", "",
             f"Recipe: {report['recipe']}", "",
             "| seed | test accuracy | train accuracy (augmented) | time per epoch (median) | run |",
             "| --- | --- | --- | --- | --- |"]
    for r in report["runs"]:
        lines.append(f"| {r['seed']} | {pct(r['test_acc'])} | {pct(r['train_acc'])} | {r['epoch_time_s']:.1f} s "
                     f"| `{r['run']}` |")
    spread = f" ± {100 * s['std']:.2f} (sample std)" if s["std"] is not None else " (one seed: no spread)"
    lines += ["", f"**Mean {pct(s['mean'])}{spread}**, min {pct(s['min'])}, max {pct(s['max'])}.", ""]
    return "\n".join(lines)


def write_report(report: dict, out_dir: Path, stem: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(report, indent=2) + "\n"), (".md", markdown(report))):
        write_text_atomic(out_dir / f"{stem}{suffix}", text)
    return out_dir / f"{stem}.md"


def recipe(config: dict) -> str:
    from trainer.recipe import recorded
    a = recorded(config) or config.get("args", {})
    keys = ("loader", "batch_size", "lr", "schedule", "warmup", "momentum", "nesterov", "weight_decay",
            "label_smoothing", "ema", "widths", "activation", "whiten")
    return ", ".join(f"{k} {a[k]}" for k in keys if a.get(k) is not None) + \
        f"; precision: {config.get('precision', '?')}"


def main(argv=None) -> int:
    """The command line, behind the project's boundary (pipeline.cli): a failure of the OS is one sentence."""
    from pipeline.cli import run_main
    return run_main(lambda: _main(argv))


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(
        prog="python -m bench.seeds",
        description="Train a recipe (train.py's default, or --config) once per seed and report the mean and spread "
                    "of the final test accuracy (markdown + JSON). Options after '--' go to train.py unchanged.",
        formatter_class=DefaultsHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="one training run per seed")
    ap.add_argument("--data-dir", required=True, help="converted data (python -m pipeline.convert)")
    ap.add_argument("--config", default=None, metavar="RECIPE.toml",
                    help="a recipe file, as train.py --config; run folders and the report are named after it")
    ap.add_argument("--arch", default="c1c2c3c4")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--runs-dir", default="runs/seeds", help="one run folder per seed goes here")
    ap.add_argument("--out", default="bench/results", help="where the report goes")
    ap.add_argument("--jobs", type=int, default=1,
                    help="train this many seeds side by side, each logging to RUNS_DIR/<run>.log: on a GPU one "
                         "run of this small net does not fill the card (on an H200, eight side by side took 14 s "
                         "per epoch each); on a CPU they share the cores (OMP_NUM_THREADS = cores // jobs)")
    args = ap.parse_args(own)
    if len(set(args.seeds)) != len(args.seeds):
        ap.error("--seeds: each seed once (a repeated seed repeats the same run)")
    if args.epochs < 1:
        ap.error("--epochs must be positive")
    if args.jobs < 1:
        ap.error("--jobs must be positive")
    owned = {"--seed", "--out", "--resume", "--epochs", "--arch", "--data-dir", "--device", "--config"}
    clash = [a for a in extra if a.split("=")[0] in owned]
    if clash:
        ap.error(f"{clash[0]} is set by bench.seeds itself; give it as an option before '--'")

    # train.py runs in the project root: hand it absolute paths, whatever folder this was started from
    args.data_dir, args.runs_dir = Path(args.data_dir).resolve(), Path(args.runs_dir).resolve()
    config = str(Path(args.config).resolve()) if args.config else None
    from bench.__main__ import choose_device, device_name
    from pipeline.format import DataError, read_meta
    from trainer.recipe import RecipeError, load_file, parse_command_line
    try:
        if args.config:
            load_file(args.config)                      # a recipe train.py would refuse, refused before any run
        read_meta(args.data_dir)
        device = choose_device(args.device)
        desc, slug = device_name(device)
    except (DataError, RecipeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"), "device": desc, "arch": args.arch,
              "epochs": args.epochs, "command": "python -m bench.seeds " + " ".join(argv), "recipe": "", "runs": []}

    # a recipe file names its runs and report; what else a run trained with, its config.json records
    name = Path(args.config).stem if args.config else "default"
    stem = f"{dt.date.today().isoformat()}-{slug}-seeds-{name}-{args.arch}"
    runs = {seed: args.runs_dir / f"{name}-{args.arch}-e{args.epochs}-seed{seed}" for seed in args.seeds}
    done: dict[int, list] = {}
    todo = []

    def train_args(seed: int) -> list[str]:
        return ["--data-dir", str(args.data_dir), "--arch", args.arch, "--epochs", str(args.epochs), "--seed", str(seed),
                "--device", args.device, "--out", str(runs[seed]), *(["--config", config] if config else []),
                *extra]

    for seed, run in runs.items():
        metrics = finished(run, args.epochs)
        if metrics is None:
            todo.append(seed)
            continue
        differs = recipe_mismatch(run, vars(parse_command_line(train_args(seed))))
        if differs:
            # (its report, written when it finished, stays valid)
            print(f"error: seed {seed}: {run} finished under another recipe than this command's ({differs}): "
                  f"options after '--' do not name the run folders, so put them in a recipe file of their own "
                  f"(--config), or move that folder away, or give another --runs-dir.", file=sys.stderr)
            return 2
        print(f"[seeds] seed {seed}: {run} already finished, reused", flush=True)
        done[seed] = metrics

    def rewrite_report() -> Path:           # the seeds finished so far, in seed order
        report["recipe"] = recipe(json.loads((runs[min(done)] / "config.json").read_text()))
        report["runs"] = [row(s, runs[s], done[s], args.epochs) for s in sorted(done)]
        report["summary"] = summarize(report["runs"])
        return write_report(report, Path(args.out), stem)

    md = rewrite_report() if done else None
    env = child_env(device, args.jobs)
    running: dict[int, tuple] = {}        # seed -> (process, log file or None)
    failed: list[int] = []
    try:
        while todo or running:
            while todo and len(running) < args.jobs:
                seed = todo.pop(0)
                run = runs[seed]
                cmd = [sys.executable, "train.py", *train_args(seed)]
                if (run / "checkpoint.pt").exists():
                    cmd.append("--resume")
                log = None
                if args.jobs > 1:       # side by side, each run's progress goes to its own log
                    args.runs_dir.mkdir(parents=True, exist_ok=True)
                    log = open(args.runs_dir / f"{run.name}.log", "a")
                print(f"[seeds] seed {seed}: {' '.join(cmd[1:])}" + (f"  (log: {log.name})" if log else ""), flush=True)
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT if log else None)
                running[seed] = (proc, log)
            seed = wait_any(running)
            proc, log = running.pop(seed)
            if log is not None:
                log.close()
            metrics = finished(runs[seed], args.epochs)
            if proc.returncode != 0 or metrics is None:
                where = f"its log is {log.name}" if log else "its output is above"
                print(f"error: seed {seed} failed (train.py exit {proc.returncode}); {where}, its folder is "
                      f"{runs[seed]}.", file=sys.stderr)
                failed.append(seed)
                todo.clear()        # start no more; those running finish and are reported
                continue
            print(f"[seeds] seed {seed}: test accuracy {100 * metrics[args.epochs - 1]['test_acc']:.2f}%", flush=True)
            done[seed] = metrics
            md = rewrite_report()
    except KeyboardInterrupt:
        for p, _ in running.values():
            p.terminate()
        for p, _ in running.values():
            p.wait()
        print("\n[seeds] interrupted; run the same command again to resume the unfinished seeds.", file=sys.stderr)
        return 130
    if done:
        print(markdown(report))
        print(f"[seeds] report: {md} (and .json)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
