"""The Colab notebooks run top to bottom (executed with nbclient in a fresh kernel, as Colab would)."""

import pathlib

import pytest

import nbclient  # noqa: E402 - test extras
import nbformat  # noqa: E402

COLAB = pathlib.Path(__file__).resolve().parent.parent / "colab"
NOTEBOOKS = sorted(p.name for p in COLAB.glob("*.ipynb"))


def test_there_are_four_notebooks():
    assert NOTEBOOKS == ["01_quickstart_2d.ipynb", "02_digits.ipynb", "03_functional_solvers.ipynb",
                         "04_sharded_training.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    # a plain single-device CPU runtime, like Colab's: drop the test suite's 8 fake devices
    # (the sharded-training notebook asks for its own before JAX starts)
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(COLAB / name, as_version=4)
    assert notebook.cells[1].source.lstrip().startswith("# Install diffjax") or "Install diffjax" in \
        notebook.cells[1].source, "each notebook starts with the pip install of diffjax"
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
