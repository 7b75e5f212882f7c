"""The wheel is the product: built from the checkout, installed into a fresh virtualenv outside it,
``diffjax train --config digits`` runs from an empty directory (the configs ship in the package)."""

import os
import pathlib
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.xdist_group("subprocess-heavy")
def test_the_wheel_trains_the_digits_config_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(wheels)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("diffjax-*.whl")
    # a fresh virtualenv; its dependencies (jax, flax, ...) come from this environment, diffjax only
    # from the wheel (--no-deps: nothing is downloaded)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, script = venv / "bin" / "python", venv / "bin" / "diffjax"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # this environment's packages, after the venv's own (a plain path entry: its .pth files, such as
    # an editable install of diffjax, are not run)
    pathlib.Path(purelib, "outer_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    where = subprocess.run([str(python), "-c", "import diffjax, diffjax.configs as c; print(diffjax.__file__); "
                            "print(c.names())"], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120)
    assert where.returncode == 0, where.stderr[-3000:]
    assert str(venv) in where.stdout.splitlines()[0], where.stdout  # the wheel's copy, not the checkout's
    assert "'digits'" in where.stdout and "'toy2d'" in where.stdout
    train = subprocess.run(
        [str(script), "train", "--config", "digits", "--steps", "2", "--workdir", "run", "--no-progress",
         "--config.model.options.nf=8", "--config.model.options.ch_mult=(1,)",
         "--config.model.options.num_res_blocks=1", "--config.model.options.attn_resolutions=()",
         "--config.sampling.num_samples=0", "--config.eval.bpd_num_examples=0"],
        capture_output=True, text=True, cwd=elsewhere, env=env, timeout=600)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    assert "done: step 2" in train.stdout
    assert (elsewhere / "run" / "checkpoints" / "2").is_dir()
