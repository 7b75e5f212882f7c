"""The README's API tour must run exactly as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_api_tour_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python code block"
    namespace = {"__name__": "__readme__"}  # the blocks build on each other, as in a notebook
    for code in blocks:
        exec(compile(code, str(README), "exec"), namespace)
    lines = capsys.readouterr().out.splitlines()
    step, loss = lines[0].split()
    assert step == "1" and float(loss) > 0  # one train step taken, a finite positive loss
    assert lines[1].startswith("(512, 2)")  # the sampling tour ran
    assert lines[2] == "True"  # the likelihood equals the exact log-density
    assert lines[3] == "True"  # classifier guidance put every sample in the chosen component
    assert lines[4] == "(2, 8, 8, 1)"  # a network turned into a score model
    assert lines[-2:] == ["0.7", "True"]  # SuperDiff OR put 70 % in the left model, AND samples on x = 0
