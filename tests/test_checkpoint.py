"""Checkpoints read against their schema at their one reader (model.checkpoint): every field a reader uses, of its
type and range, or one sentence; for --resume, for model.evaluate and for model.release alike."""
import shutil

import pytest
import torch

from conftest import run_in_process


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir):
    """A finished one-epoch run on the tiny data: (its folder, the command's arguments)."""
    import train
    out = tmp_path_factory.mktemp("ckpt") / "run"
    args = ("--data-dir", tiny_dir, "--epochs", 1, "--out", out)
    proc = run_in_process(train.main, *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, args


def _corrupt(ckpt: dict, kind: str) -> dict:
    if kind == "an epoch that is text":
        ckpt["epoch"] = "1"
    elif kind == "metrics that are null":
        ckpt["metrics"] = None
    elif kind == "a test accuracy that is null":
        ckpt["metrics"][0]["test_acc"] = None
    elif kind == "a model that is a list":
        ckpt["model"] = [1, 2, 3]
    elif kind == "NaN weights":
        name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
        ckpt["model"][name] = torch.full_like(ckpt["model"][name], float("nan"))
    elif kind == "an arch that is a number":
        ckpt["arch"] = 5
    elif kind == "a number of classes that is text":
        ckpt["num_classes"] = "10"
    elif kind == "widths that are text":
        ckpt["widths"] = "wide"
    return ckpt


BOTH = ["an epoch that is text", "metrics that are null", "a test accuracy that is null", "a model that is a list",
        "NaN weights", "an arch that is a number", "a number of classes that is text", "widths that are text"]


def _copy_run(trained, tmp_path):
    out, args = trained
    mine = tmp_path / "run"
    shutil.copytree(out, mine)
    return mine, [mine if a == out else a for a in args]


def _one_sentence(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(f in last for f in fragments), last


@pytest.mark.parametrize("kind", BOTH)
def test_a_checkpoint_with_wrong_contents_is_a_sentence_for_resume_and_evaluate(trained, tmp_path, tiny_dir, kind):
    import model.evaluate
    import train
    out, args = _copy_run(trained, tmp_path)
    path = out / "checkpoint.pt"
    torch.save(_corrupt(torch.load(path, weights_only=True), kind), path)
    _one_sentence(run_in_process(train.main, *args, "--resume"), str(path))
    _one_sentence(run_in_process(model.evaluate.main, "--checkpoint", path, "--data-dir", tiny_dir,
                                 "--out", tmp_path / "eval"), str(path))


def test_random_bytes_are_not_a_checkpoint(trained, tmp_path):
    import train
    out, args = _copy_run(trained, tmp_path)
    (out / "checkpoint.pt").write_bytes(bytes(range(256)) * 64)
    _one_sentence(run_in_process(train.main, *args, "--resume"), "not a readable checkpoint")


@pytest.mark.parametrize("kind,fragment", [
    ("an epoch of a million", "finished epoch 1000000 of a 1-epoch run"),
    ("a random-number state that is empty", "random-number state"),
    ("an optimizer of other parameter groups", "does not fit this run"),
    ("metrics of fewer epochs", "metrics of 0 epochs"),
])
def test_a_training_state_that_cannot_be_resumed_is_a_sentence(trained, tmp_path, kind, fragment):
    """Before this, an epoch of a million made --resume exit 0 having trained nothing."""
    import train
    out, args = _copy_run(trained, tmp_path)
    path = out / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    if kind == "an epoch of a million":
        ckpt["epoch"] = 10 ** 6
    elif kind == "a random-number state that is empty":
        ckpt["rng"] = {}
    elif kind == "an optimizer of other parameter groups":
        ckpt["optimizer"]["param_groups"] = ckpt["optimizer"]["param_groups"][:1]
    elif kind == "metrics of fewer epochs":
        ckpt["metrics"] = []
    torch.save(ckpt, path)
    _one_sentence(run_in_process(train.main, *args, "--resume"), fragment)


def test_resume_with_another_data_dir_names_the_data_not_the_policy(trained, tmp_path, mini_dir):
    import train
    out, args = _copy_run(trained, tmp_path)
    args = [mini_dir if a == args[1] else a for a in args]
    _one_sentence(run_in_process(train.main, *args, "--resume"), "trained on other data", "--data-dir it trained on")
