"""What a run saves and restores: the random-number state, the epoch's checkpoint (through model.checkpoint, the one
writer and reader of the format), and --resume's checks that a run goes on as it started."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from model import layout, training
from model.checkpoint import (CheckpointError, checkpoint_weights, load, model_from_checkpoint, require_resumable,
                              save_atomic)
from pipeline.cli import os_error_sentence
from pipeline.policy import AugmentPolicy
from trainer import recipe as recipes
from trainer.folders import RunError
from trainer.recipe import Recipe, flag


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def checkpoint(run, epoch: int, metrics: list[dict]) -> dict:
    """The checkpoint after ``epoch`` (1-based) of ``run`` (a trainer.loop.Run): "model" holds the weights that are
    tested and released (the average with --ema, the trained ones beside it)."""
    config = run.config
    extra = {} if run.ema is None else {"trained_model": run.net.state_dict(),
                                        "ema_updates": int(run.ema.n_averaged.item())}
    return {"model": run.tested.state_dict(), "arch": run.recipe.arch, "widths": config["widths"],
            "layout": layout(run.net), "activation": config["activation"], **extra,
            **({"model_spec": config["model_spec"]} if config["model_spec"] else {}),
            "num_classes": len(run.meta["classes"]),
            "optimizer": training.optimizer_state(run.opt), "scheduler": training.scheduler_state(run.sched),
            "scaler": run.step.scaler.state_dict(), "rng": rng_state(), "epoch": epoch,
            "metrics": metrics, "config": config}


def save_checkpoint(state: dict, ckpt_path: Path, out: Path, metrics: list[dict]) -> None:
    """The epoch's checkpoint (metrics.json and history.png follow it, and are made again from it on --resume if a
    kill falls between). A disk that fills up loses only this epoch, and the sentence says so."""
    try:
        save_atomic(state, ckpt_path)
    except OSError as e:
        kept = metrics[-2]["epoch"] if len(metrics) > 1 else 0
        reason = os_error_sentence(e).rstrip(".")
        raise RunError(f"could not save the checkpoint of epoch {metrics[-1]['epoch']}: {reason}; "
                       f"{out} still holds " + (f"epoch {kept}'s: continue it with the same command and --resume "
                                                f"once there is room." if kept else
                                                "no checkpoint: run the same command again once there is room.")
                       ) from None


def check_same_run(ckpt: dict, ckpt_path: Path, out: Path, recipe: Recipe, meta: dict, policy: AugmentPolicy) -> None:
    """--resume goes on with the recipe, the data and the policy the run started with (its config.json records
    them): RunError naming what differs otherwise."""
    require_resumable(ckpt, ckpt_path)
    before, now = recipes.recorded(ckpt["config"]), recipes.resolved(vars(recipe))
    if before is None:
        raise RunError(f"--resume: the run in {out} was written by an earlier cifarflow that did not record its "
                       f"recipe, so it cannot be checked that this command goes on with the same one: start "
                       f"the run afresh in another --out.")
    differ = [key for key in recipes.KEYS if before.get(key) != now.get(key)]
    if differ:
        key, more = differ[0], recipes.differences(before, now, differ[1:])
        same = (f"pass {flag(key) if before[key] else '--no-' + flag(key)[2:]}" if isinstance(before[key], bool)
                else "pass the same value")
        also = f" (and {', '.join(more)})" if more else ""
        raise RunError(f"--resume: the run in {out} used {flag(key)} {before[key]}, not {now[key]}{also}: {same} "
                       f"(its config.json records its recipe).")
    trained_on = ckpt["config"].get("data")
    if isinstance(trained_on, dict) and any(trained_on.get(k) != meta[k] for k in ("classes", "counts", "mean", "std")):
        was = ckpt["config"]["args"].get("data_dir")
        raise RunError(f"--resume: the run in {out} trained on other data than {recipe.data_dir} holds "
                       f"({_counts(trained_on)}, not {_counts(meta)}): pass the --data-dir it trained on"
                       + (f" ({was})." if isinstance(was, str) else "."))
    try:
        trained_policy = AugmentPolicy.from_dict(ckpt["config"]["policy"])
    except ValueError as e:
        raise CheckpointError(f"{ckpt_path} records a policy this version cannot read ({e}): start the run "
                              f"afresh in another --out.") from None
    if trained_policy != policy:
        now = f"--policy {recipe.policy}" if recipe.policy else "the project's policy"
        raise RunError(f"--resume: the run in {out} trained with another augmentation policy than {now}: pass "
                       f"the --policy it trained with (its config.json holds that policy).")


def _counts(data: dict) -> str:
    counts = data.get("counts") if isinstance(data.get("counts"), dict) else {}
    return f"{counts.get('train')} train and {counts.get('test')} test images"


def restore(run, ckpt_path: Path) -> dict:
    """--resume: the checkpoint's weights, optimizer, schedule and random-number state into ``run`` (a
    trainer.loop.Run), after check_same_run; returns the checkpoint."""
    ckpt = load(ckpt_path)
    check_same_run(ckpt, ckpt_path, run.out, run.recipe, run.meta, run.policy)
    # "model" holds the weights that are tested and released: the average when --ema is on
    if run.model_object is not None:      # fit(model=an nn.Module): the weights go into it
        tested = checkpoint_weights(ckpt)
    else:
        tested = model_from_checkpoint(ckpt, ckpt_path, run.recipe.arch).state_dict()
    try:
        if run.ema is not None:
            run.ema.module.load_state_dict(tested)
            run.ema.n_averaged.fill_(ckpt["ema_updates"])
            run.net.load_state_dict(ckpt["trained_model"])
        else:
            run.net.load_state_dict(tested)
        training.load_optimizer_state(run.opt, ckpt["optimizer"])
        run.sched.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt_path} holds trained weights, an optimizer, scheduler or random-number "
                              f"state that does not fit this run ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]}): start the run afresh in another --out.") from None
    return ckpt


def restore_scaler(step, ckpt: dict, ckpt_path: Path) -> None:
    try:
        step.scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt_path} holds a gradient-scaler state that does not fit this run "
                              f"({type(e).__name__}): start the run afresh in another --out.") from None
