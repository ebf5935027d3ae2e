"""Recipe files: recipes/default.toml holds train.py's defaults, --config lays a file over it, flags override
both, bad files are refused with a sentence, and a run records its recipe and code version."""
import subprocess
import tomllib

import pytest

from conftest import ROOT
from train import build_parser, fit, main, parse_args
from trainer import loop, recipe


class _RaisingParser(__import__("argparse").ArgumentParser):
    """A bad option is a ValueError with argparse's sentence, not SystemExit."""

    def error(self, message):
        raise ValueError(message)


def write(tmp_path, text, name="r.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(tmp_path, text):
    with pytest.raises(ValueError) as e:
        parse_args(["--config", str(write(tmp_path, text))], parser_class=_RaisingParser)
    return str(e.value)


def test_the_defaults_are_the_default_recipe_file():
    table = tomllib.loads((ROOT / "recipes" / "default.toml").read_text())
    args = vars(parse_args([]))
    assert table and {k: args[k] for k in table} == table
    assert args["whiten"] is True      # the per-arch rule the file leaves to the code
    help_text = build_parser().format_help()
    assert "(default: 128)" in help_text and "(default: 0.0005)" in help_text


def test_a_recipe_file_overrides_the_default_and_flags_override_it(tmp_path):
    path = write(tmp_path, 'epochs = 3\nbatch_size = 64\nschedule = "step"\nnesterov = false\nwidths = [32, 48, 64, 96]\n'
                           'whiten = false\n')
    args = parse_args(["--config", str(path), "--batch-size", "32"])
    assert (args.epochs, args.batch_size, args.schedule, args.nesterov, args.widths, args.whiten) == \
        (3, 32, "step", False, [32, 48, 64, 96], False)
    assert args.lr == 0.1 and args.config == str(path)      # the rest from the default recipe
    assert parse_args(["--config", str(ROOT / "recipes" / "quick.toml")]).epochs == 2


@pytest.mark.parametrize("text, says", [
    ("epoch = 3\n", "'epoch' is not an option of train.py"),
    ('epochs = "thirty"\n', "must be a number, not text"),
    ('lr = "0.1"\n', "must be a number, not text: write it without quotes"),
    ('widths = ["32", 64, 96, 128]\n', "must be a number, not text"),
    ("seed = -1\n", "must be a whole number from 0 to 2**63 - 1"),
    ("epochs = 2.5\n", "must be a whole number"),
    ("epochs = 0\n", "must be a positive integer"),
    ("lr = -1\n", "must be a non-negative number"),
    ("nesterov = 1\n", "must be true or false"),
    ("epochs = true\n", "not true or false"),
    ('schedule = "cosine"\n', "must be one of onecycle, step"),
    ("widths = [1, 2]\n", "must be a list of 4 values"),
    ("resume = true\n", "'resume' is not an option"),
    ("[training]\nepochs = 3\n", "'training' is not an option"),
    ("epochs = \n", "is not valid TOML"),
])
def test_a_bad_recipe_is_refused_with_a_sentence_naming_file_and_key(tmp_path, text, says):
    message = refused(tmp_path, text)
    assert says in message and "r.toml" in message


def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--config", str(tmp_path / "missing.toml")])
    assert e.value.code == 2
    assert "missing.toml does not exist" in capsys.readouterr().err


def test_the_default_recipe_file_loads_cleanly():
    values = recipe.load_file(recipe.DEFAULT)
    assert values["epochs"] == 30 and values["loader"] == "gpu"


def test_code_version_says_commit_and_dirty(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert recipe.code_version(repo) == {"commit": head, "dirty": False}
    (repo / "untracked.txt").write_text("not code")
    assert recipe.code_version(repo)["dirty"] is False
    (repo / "a.py").write_text("x = 2\n")
    assert recipe.code_version(repo) == {"commit": head, "dirty": True}
    assert recipe.code_version(tmp_path / "nowhere") is None


def test_a_run_records_its_recipe_and_code(tiny_dir, tmp_path):
    path = write(tmp_path, "epochs = 1\nbatch_size = 250\nlabel_smoothing = 0.0\n")
    r = fit(None, tiny_dir, epochs=1, out=tmp_path / "run", config=str(path), amp="off", activation="silu",
            whiten=False)
    assert r.config["recipe"]["files"] == ["recipes/default.toml", str(path)]
    values = r.config["recipe"]["values"]
    assert set(values) == set(recipe.KEYS) and values["activation"] == "silu" and values["epochs"] == 1
    assert values["batch_size"] == 250 and values["label_smoothing"] == 0.0 and values["lr"] == 0.1
    assert r.config["args"]["batch_size"] == 250
    code = r.config["code"]
    assert code is None or len(code["commit"]) == 40


def test_resume_goes_on_with_the_recorded_recipe_or_says_what_differs(tiny_dir, tmp_path):
    """--resume compares the recipe config.json records with the command's; a run without one (written before
    runs recorded their recipe) is refused with a sentence, not guessed at."""
    import torch

    import train
    out = tmp_path / "run"
    argv = ["--data-dir", str(tiny_dir), "--epochs", "1", "--amp", "off", "--out", str(out)]
    assert train.main(argv) == 0
    ckpt_path = out / "checkpoint.pt"
    with pytest.raises(train.RunError, match=r"used --lr 0\.1, not 0\.05 \(and --momentum 0\.9, not 0\.8\)"):
        loop.run(train.parse_args([*argv, "--resume", "--lr", "0.05", "--momentum", "0.8"]))
    ckpt = torch.load(ckpt_path, weights_only=False)
    ckpt["config"]["recipe"] = ["recipes/default.toml"]         # as runs recorded it before: files only
    torch.save(ckpt, ckpt_path)
    with pytest.raises(train.RunError, match="did not record its recipe"):
        loop.run(train.parse_args([*argv, "--resume"]))
