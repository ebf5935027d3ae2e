"""Run folders: which folders a run may write into, the files it writes there (config.json, metrics.json,
history.png, each atomically), and the sentences that say what a stopped run left behind."""
from __future__ import annotations

import json
from pathlib import Path

from model.checkpoint import write_atomic, write_text_atomic


class RunError(Exception):
    """A run that cannot start or go on as asked (its folder, --resume, an option this device cannot do).
    The message is one sentence for the user."""


def write_json(obj, path: Path) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def plot_history(metrics: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [m["epoch"] for m in metrics]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(ep, [m["train_loss"] for m in metrics], "o-", label="train (augmented, smoothed)")
    a.plot(ep, [m["test_loss"] for m in metrics], "o-", label="test")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(ep, [100 * m["train_acc"] for m in metrics], "o-", label="train (augmented)")
    b.plot(ep, [100 * m["test_acc"] for m in metrics], "o-", label="test")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy (%)"), b.legend(), b.grid(alpha=0.3)
    best = max(metrics, key=lambda m: m["test_acc"])
    fig.suptitle(f"last test accuracy {100 * metrics[-1]['test_acc']:.2f}% "
                 f"(best {100 * best['test_acc']:.2f}% at epoch {best['epoch']})")
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def write_progress(metrics: list[dict], out: Path) -> None:
    """metrics.json and history.png: what follows from the checkpoint (made again from it on --resume)."""
    write_json(metrics, out / "metrics.json")
    plot_history(metrics, out / "history.png")


def run_folder_state(out: Path) -> str:
    """"absent", "empty", "run" (a run folder of train.py's, with its config.json or checkpoint: it may be
    continued or restarted, and only the run's own files in it are ever written) or "foreign" (anything else:
    never written into)."""
    if not out.exists():
        return "absent"
    if not out.is_dir():
        return "foreign"
    names = {p.name for p in out.iterdir()}
    if not names:
        return "empty"
    try:
        config = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    ours = isinstance(config, dict) and "args" in config and "policy" in config
    return "run" if ours or "checkpoint.pt" in names else "foreign"


def check_run_folder(out: Path, resume: bool) -> bool:
    """Whether this run continues from a checkpoint: refuses (RunError) a folder that is not a run's, a finished
    or started run without --resume, --resume with nothing to continue."""
    ckpt_path = out / "checkpoint.pt"
    state = run_folder_state(out)
    if state == "foreign":
        raise RunError(f"{out} exists and is not a run folder of train.py (it holds other files): it is never "
                       f"written into; pass another --out.")
    if ckpt_path.exists() and not resume:
        raise RunError(f"{out} already holds a run: pass --resume to continue it, or another --out.")
    if resume and not ckpt_path.exists():
        if state == "run":      # killed or interrupted before its first checkpoint: nothing to lose, start it
            print(f"note: {out} holds no checkpoint yet (stopped during epoch 1): starting it from the beginning")
            return False
        raise RunError(f"--resume: {ckpt_path} does not exist, nothing to continue: drop --resume to start a run.")
    return resume


def interrupted_sentence(out: Path, done: int) -> str:
    if done:
        return (f"interrupted: {out} holds the checkpoint of epoch {done}; continue with the same command "
                f"and --resume.")
    return ("interrupted during epoch 1, before its checkpoint: nothing to continue; run the same command again "
            "to start over.")
