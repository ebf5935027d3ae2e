"""The README's Python snippets run as written, in a folder laid out as the README assumes: data/cifar10 holds
converted data (the tiny generated set here) and my_net.py a student's network (tests/data/student_net.py).
One change only: fit()'s 30 epochs become 1, so the test takes seconds."""
import os
import re
import shutil

from conftest import ROOT

SNIPPET = re.compile(r"```python\n(.*?)```", re.S)


def snippets() -> list[str]:
    return SNIPPET.findall((ROOT / "README.md").read_text())


def test_the_readme_has_its_loader_and_fit_snippets():
    found = snippets()
    assert any("build_loader(" in s for s in found) and any("fit(" in s for s in found)


def test_the_readme_python_snippets_run(tiny_dir, tmp_path, capsys):
    (tmp_path / "data").mkdir()
    os.symlink(tiny_dir, tmp_path / "data" / "cifar10")
    shutil.copy(ROOT / "tests" / "data" / "student_net.py", tmp_path / "my_net.py")
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        for code in snippets():
            code = code.replace("epochs=30", "epochs=1")
            exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    finally:
        os.chdir(here)
    printed = capsys.readouterr().out
    assert re.search(r"\d+ batches per epoch", printed)
    assert re.search(r"\d+\.\d\d% after 1 epochs in runs/my-net-py", printed)
    assert (tmp_path / "runs" / "my-net-py" / "checkpoint.pt").is_file()
