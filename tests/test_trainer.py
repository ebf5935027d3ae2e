"""The training package: one typed recipe behind the command line, recipe files and fit(); the loop that moved out of
train.py gives the metrics it gave there."""
import dataclasses
import json

import pytest

from conftest import ROOT, needs_mini, run_in_process
from trainer import fit, recipe
from trainer.recipe import Recipe, RecipeError

BEFORE = json.loads((ROOT / "tests" / "data" / "metrics_before_the_move.json").read_text())
SAME = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")


def test_every_option_is_a_field_of_the_recipe_with_its_help_group_and_default():
    ap = recipe.build_parser()
    dests = {a.dest for a in ap._actions if a.dest != "help"}
    assert dests == set(recipe.FIELDS)
    for name, f in recipe.FIELDS.items():
        spec = f.metadata["spec"]
        assert spec.help and spec.group in recipe.GROUPS, name
    values = recipe.defaults()
    assert set(values) == set(recipe.FIELDS)            # recipes/default.toml gives every number without a default
    assert set(recipe.KEYS) <= set(recipe.FIELDS)


def test_a_wrong_key_or_value_names_it_and_where_it_was_written(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text('epochs = 3\n\n# the rate\nlr = "0.1"\n')
    with pytest.raises(RecipeError, match=r"recipe .*r\.toml line 4: lr = '0\.1' must be a number, not text"):
        recipe.load_file(path)
    path.write_text("epochs = 3\nbatchsize = 2\n")
    with pytest.raises(RecipeError, match=r"r\.toml line 2: 'batchsize' is not an option of train\.py"):
        recipe.load_file(path)
    with pytest.raises(RecipeError, match=r"fit\(lr='0\.1'\): --lr must be a number, not text"):
        recipe.from_options({"lr": "0.1"})
    with pytest.raises(RecipeError, match=r"fit\(epochs=2\.5\): --epochs must be a whole number"):
        recipe.from_options({"epochs": 2.5})
    with pytest.raises(RecipeError, match="fit\\(\\) takes no option 'batchsize'"):
        recipe.from_options({"batchsize": 3})
    import train
    with pytest.raises(SystemExit):
        train.parse_args(["--lr", "x"])
    assert "argument --lr: invalid learning_rate value: 'x'" in capsys.readouterr().err


def _resolved(config: dict) -> dict:
    """What a config.json says the run trained with, apart from where the recipe was written."""
    args = {k: v for k, v in config["args"].items() if k != "config"}
    return {"args": args, "values": config["recipe"]["values"], "policy": config["policy"]}


def test_the_command_line_a_recipe_file_and_fit_resolve_the_same_recipe(tiny_dir, tmp_path):
    import train
    out = tmp_path / "run"
    flags = ["--data-dir", str(tiny_dir), "--epochs", "1", "--batch-size", "200", "--lr", "0.05", "--no-nesterov",
             "--label-smoothing", "0", "--widths", "32", "48", "64", "96", "--out", str(out / "cli")]
    toml = tmp_path / "mine.toml"
    toml.write_text("epochs = 1\nbatch_size = 200\nlr = 0.05\nnesterov = false\nlabel_smoothing = 0.0\n"
                    "widths = [32, 48, 64, 96]\n")
    assert run_in_process(train.main, *flags).returncode == 0
    assert run_in_process(train.main, "--data-dir", tiny_dir, "--config", toml, "--out", out / "toml").returncode == 0
    fit(None, tiny_dir, epochs=1, out=out / "fit", batch_size=200, lr=0.05, nesterov=False, label_smoothing=0.0,
        widths=[32, 48, 64, 96])
    configs = {name: json.loads((out / name / "config.json").read_text()) for name in ("cli", "toml", "fit")}
    for c in configs.values():
        c["args"]["out"] = "OUT"
    assert _resolved(configs["cli"]) == _resolved(configs["toml"]) == _resolved(configs["fit"])
    assert configs["toml"]["recipe"]["files"] == ["recipes/default.toml", str(toml)]
    assert configs["cli"]["recipe"]["files"] == configs["fit"]["recipe"]["files"] == ["recipes/default.toml"]
    assert configs["cli"]["args"]["widths"] == [32, 48, 64, 96] and configs["fit"]["args"]["lr"] == 0.05


def test_fit_builds_the_recipe_without_a_command_line(tiny_dir, monkeypatch):
    """fit() calls the loop with a Recipe; nothing in it parses an argv."""
    import argparse
    from trainer import loop
    seen = {}

    def parse_nothing(*a, **k):
        raise AssertionError("fit() parsed a command line")
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_nothing)
    monkeypatch.setattr(loop, "run", lambda r, model_object=None: seen.update(recipe=r) or
                        {"metrics": [], "out": r.out, "model": None, "config": {}})
    fit(None, tiny_dir, epochs=3, batch_size=64)
    r = seen["recipe"]
    assert isinstance(r, Recipe) and (r.epochs, r.batch_size, r.data_dir) == (3, 64, str(tiny_dir))
    assert dataclasses.replace(r) == r


def _two_epochs(data_dir, out):
    """Two epochs of train.py (seed 7, default recipe) with no augmentation: the records were taken with every
    transform's p at 0, so that they hold for the loop whatever way a policy draws its numbers."""
    import train
    policy = out.parent / "no-augmentation.json"
    policy.write_text(json.dumps({"format_version": 2, "mean": None, "std": None, "image_size": 32, "transforms": []}))
    proc = run_in_process(train.main, "--data-dir", data_dir, "--epochs", 2, "--seed", 7, "--policy", policy,
                          "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "metrics.json").read_text())


def _same_metrics(got, recorded, n_train):
    assert [m["epoch"] for m in got] == [m["epoch"] for m in recorded]
    for g, r in zip(got, recorded):
        for key in ("train_loss", "test_loss", "lr"):
            assert g[key] == pytest.approx(r[key], rel=1e-4), (key, g, r)
        assert abs(g["train_acc"] - r["train_acc"]) * n_train <= 2, (g, r)     # a image or two, where a float
        assert g["test_acc"] == pytest.approx(r["test_acc"], abs=0.005), (g, r)   # rounds the other way


def test_the_moved_loop_gives_the_metrics_train_py_gave(tiny_dir, tmp_path):
    """Two epochs with a fixed seed on the tiny generated data, as recorded from train.py before the move."""
    _same_metrics(_two_epochs(tiny_dir, tmp_path / "run"), BEFORE["tiny"], 600)


@pytest.mark.slow
@needs_mini
def test_the_moved_loop_gives_the_metrics_train_py_gave_on_cifar10_mini(mini_dir, tmp_path):
    _same_metrics(_two_epochs(mini_dir, tmp_path / "run"), BEFORE["mini"], 5085)


def test_no_function_of_the_training_code_is_long_and_train_py_is_thin():
    import ast
    assert len((ROOT / "train.py").read_text().splitlines()) <= 150
    long = []
    for path in [ROOT / "train.py", *sorted((ROOT / "trainer").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno > 60:
                long.append(f"{path.name}:{node.name}")
    assert not long, long
