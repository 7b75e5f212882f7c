"""Bad input, the battery (issue 14): malformed inputs across the public API and the ``diffjax``
command each get one clear line that says what was expected, and leave the user's files as they were.

API cases raise ValueError or TypeError with a one-line message matching the expected text. CLI
cases run ``diffjax.cli.main`` in-process against a tiny trained toy run: exit status 2, exactly one
line on stderr, and every file of the run (checkpoints, samples, logs) byte-identical afterwards.
"""

import hashlib
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import mixture_2d

from diffjax import GaussianMixture, VESDE, VPSDE, data, models
from diffjax import samplers as S
from diffjax.cli import main
from diffjax.likelihood import bits_per_dim, log_likelihood
from diffjax.score import make_score_model

SDE = VPSDE()
GM = mixture_2d()
SCORE = GM.score_fn(SDE)
KEY = jax.random.PRNGKey(0)
X = jnp.zeros((4, 2))
TS = S.uniform_timesteps(SDE, 3)


def _nan_data():
    return jnp.array([[0.0, 1.0], [jnp.nan, 0.0]])


API_CASES = [
    ("x_init without a data dim", lambda: S.sample(S.ddim(SDE), SCORE, KEY, jnp.zeros((4,)), TS), ValueError,
     r"x_init must have shape \(batch, \*data_dims\)"),
    ("integer x_init", lambda: S.sample(S.ddim(SDE), SCORE, KEY, jnp.zeros((4, 2), jnp.int32), TS), TypeError,
     "x_init must be floating point"),
    ("empty batch", lambda: S.sample(S.ddim(SDE), SCORE, KEY, jnp.zeros((0, 2)), TS), ValueError, "at least one example"),
    ("increasing grid", lambda: S.sample(S.ddim(SDE), SCORE, KEY, X, jnp.array([0.1, 0.5, 1.0])), ValueError,
     "strictly decreasing"),
    ("grid reaching t = 0", lambda: S.sample(S.ddim(SDE), SCORE, KEY, X, jnp.array([1.0, 0.5, 0.0])), ValueError,
     r"lie in \(0, T\]"),
    ("grid beyond T", lambda: S.sample(S.ddim(SDE), SCORE, KEY, X, jnp.array([1.5, 0.5, 0.1])), ValueError,
     r"lie in \(0, T\]"),
    ("grid with NaN", lambda: S.sample(S.ddim(SDE), SCORE, KEY, X, jnp.array([1.0, jnp.nan, 0.1])), ValueError,
     "must be finite"),
    ("2-D grid", lambda: S.sample(S.ddim(SDE), SCORE, KEY, X, jnp.ones((3, 2))), ValueError, "1-D grid"),
    ("wrong number of keys", lambda: S.sample(S.ddim(SDE), SCORE, jax.random.split(KEY, 3), X, TS), ValueError,
     "3 per-example keys for a batch of 4"),
    ("score of the wrong shape", lambda: S.sample(S.ddim(SDE), lambda x, t: x[:, :1], KEY, X, TS), ValueError,
     r"score_fn\(x, t\) returned shape \(4, 1\); expected the shape of x, \(4, 2\)"),
    ("score not callable", lambda: S.sample(S.ddim(SDE), "score", KEY, X, TS), TypeError, "score_fn must be callable"),
    ("step not a Step", lambda: S.sample("ddim", SCORE, KEY, X, TS), TypeError, "step must be a diffjax.samplers.Step"),
    ("unknown sampler name", lambda: S.get_step("heun", SDE), ValueError, "unknown sampler 'heun'; expected one of"),
    ("two predictors in a chain", lambda: S.chain(S.ddim(SDE), S.ode_euler(SDE)), ValueError, "at most one predictor"),
    ("snr <= 0", lambda: S.langevin(SDE, snr=-0.1), ValueError, "snr > 0"),
    ("unknown Langevin norms", lambda: S.langevin(SDE, norms="median"), ValueError, "unknown langevin norms"),
    ("zero steps in a grid", lambda: S.karras_timesteps(SDE, 0), ValueError, "integer >= 1"),
    ("grid eps outside (0, T)", lambda: S.log_snr_timesteps(SDE, 5, eps=1.5), ValueError, r"eps must lie in \(0, T\)"),
    ("integer grid dtype", lambda: S.uniform_timesteps(SDE, 5, dtype=jnp.int32), TypeError, "floating point"),
    ("ode tolerance <= 0", lambda: S.ode_sample(SDE, SCORE, KEY, X, rtol=0.0), ValueError, "rtol and atol must be > 0"),
    ("negative beta_min", lambda: VPSDE(beta_min=-1.0), ValueError, "0 < beta_min < beta_max"),
    ("sigma_min above sigma_max", lambda: VESDE(sigma_min=2.0, sigma_max=1.0), ValueError, "sigma_min < sigma_max"),
    ("zero discrete steps", lambda: VPSDE(N=0), ValueError, "integer >= 1"),
    ("t of the wrong shape", lambda: SDE.marginal_prob(X, jnp.ones((3,))), ValueError, r"t must have shape \(batch,\)"),
    ("t outside [0, T]", lambda: SDE.marginal_prob(X, jnp.full((4,), 1.5)), ValueError, r"t must lie in \[0, T\]"),
    ("negative t", lambda: SDE.sde(X, jnp.full((4,), -0.1)), ValueError, r"t must lie in \[0, T\]"),
    ("mixture shapes", lambda: GaussianMixture(jnp.ones(2), jnp.zeros((3, 2)), jnp.zeros((2, 2, 2))), ValueError,
     r"weights \(K,\), means \(K, d\), covs \(K, d, d\)"),
    ("NaN data in the likelihood", lambda: log_likelihood(KEY, SDE, SCORE, _nan_data()), ValueError, "NaN or Inf"),
    ("integer data in the likelihood", lambda: log_likelihood(KEY, SDE, SCORE, jnp.zeros((2, 2), jnp.int32)),
     TypeError, "must be floating point"),
    ("likelihood eps outside (0, T)", lambda: log_likelihood(KEY, SDE, SCORE, X, eps=0.0), ValueError,
     r"eps must lie in \(0, T\)"),
    ("unknown divergence", lambda: log_likelihood(KEY, SDE, SCORE, X, divergence="trace"), ValueError,
     "unknown divergence"),
    ("levels out of range", lambda: bits_per_dim(KEY, SDE, SCORE, jnp.full((2, 2), 300), levels=256), ValueError,
     "levels"),
    ("unknown prediction", lambda: make_score_model(lambda p, x, l: x, SDE, prediction="noise"), ValueError,
     "unknown prediction type 'noise'"),
    ("unknown network", lambda: models.get_model("unet9000"), ValueError, "unet9000"),
    ("empty dataset", lambda: data.ArrayLoader(np.zeros((0, 2), np.float32), None, 4), ValueError, "dataset is empty"),
    ("NaN in a dataset", lambda: data.ArrayLoader(np.full((8, 2), np.nan, np.float32), None, 4), ValueError,
     "NaN or Inf"),
    ("batch larger than the data", lambda: data.ArrayLoader(np.zeros((8, 2), np.float32), None, 16), ValueError,
     "larger than the data"),
]


@pytest.mark.parametrize("label,call,exc,pattern", API_CASES, ids=[c[0] for c in API_CASES])
def test_the_api_rejects_bad_input_in_one_line(label, call, exc, pattern):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    assert "\n" not in message.strip(), f"{label}: more than one line: {message!r}"
    assert re.search(pattern, message), f"{label}: {message!r} does not say {pattern!r}"


# ----------------------------------------------------------------------------------------------
# the command line

TOY = ["--config", "toy2d", "--no-progress", "--config.training.n_jitted_steps=1", "--config.training.n_iters=2",
       "--config.training.log_freq=1", "--config.training.snapshot_freq=2", "--config.sampling.num_samples=8",
       "--config.sampling.n_steps=3", "--config.eval.bpd_num_examples=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("battery")
    run = str(root / "toy")
    assert main(["train", "--workdir", run, *TOY]) == 0
    assert main(["sample", "--workdir", run, "--num", "4", "--steps", "3", "--sampler", "ddim"]) == 0
    corrupt = str(root / "corrupt")
    shutil.copytree(run, corrupt)
    state_files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(corrupt, "checkpoints")) for f in fs
                   if "state" in d and os.path.getsize(os.path.join(d, f)) > 64]
    for path in state_files:  # every array file of the state cut short
        with open(path, "r+b") as f:
            f.truncate(16)
    empty = root / "empty"
    empty.mkdir()
    a_file = root / "not_a_dir"
    a_file.write_text("my notes")
    broken = root / "broken_config.py"
    broken.write_text("def get_config(:\n")
    return {"run": run, "corrupt": corrupt, "empty": str(empty), "file": str(a_file), "broken": str(broken),
            "root": str(root)}


def _digest(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


CLI_CASES = [
    ("unknown config name", ["train", "--config", "no_such_config"], "unknown config 'no_such_config'"),
    ("config file that does not run", ["train", "--config", "{broken}"], "could not be run"),
    ("unknown config key", ["train", *TOY, "--config.training.no_such_key=1"], "unknown config key"),
    ("config value of the wrong type", ["train", *TOY, "--config.training.reduce_mean=maybe"], "takes True or False"),
    ("unknown network option", ["train", *TOY, "--config.model.options.depth=3"], "unknown option 'depth'"),
    ("batch not divisible by the devices", ["train", "--workdir", "{root}/odd", *TOY, "--config.training.batch_size=7"],
     "does not divide over 8 devices"),
    ("work directory that is a file", ["train", "--workdir", "{file}", *TOY], "is a file; expected a directory"),
    ("resume with another config", ["train", "--workdir", "{run}", *TOY, "--config.optim.lr=0.5"],
     "holds a run with another config"),
    ("resume from a corrupt checkpoint", ["train", "--workdir", "{corrupt}", *TOY], "could not restore step 2"),
    ("unknown dataset", ["train", "--workdir", "{root}/tfds", "--config", "digits", "--config.data.data_dir={empty}",
                         "--config.data.dataset=no_such_dataset"], "cannot read TFDS dataset 'no_such_dataset'"),
    ("unprepared dataset", ["train", "--workdir", "{root}/tfds", "--config", "digits", "--config.data.data_dir={empty}",
                            "--config.data.dataset=mnist"], "cannot read TFDS dataset 'mnist'"),
    ("sampling without checkpoints", ["sample", "--workdir", "{empty}"], "no checkpoints in"),
    ("sampling a corrupt checkpoint", ["sample", "--workdir", "{corrupt}"], "could not restore step 2"),
    ("a step that was not saved", ["sample", "--workdir", "{run}", "--step", "999"], "no checkpoint of step 999"),
    ("unknown sampler", ["sample", "--workdir", "{run}", "--sampler", "warp"], "unknown sampler 'warp'"),
    ("unknown grid", ["sample", "--workdir", "{run}", "--grid", "spiral"], "unknown sampling.grid 'spiral'"),
    ("negative number of samples", ["sample", "--workdir", "{run}", "--num", "-3"], "argument --num: expected a positive integer, got -3"),
    ("zero steps", ["sample", "--workdir", "{run}", "--steps", "0"], "argument --steps: expected a positive integer, got 0"),
    ("zero batch", ["sample", "--workdir", "{run}", "--batch", "0"], "argument --batch: expected a positive integer, got 0"),
    ("negative snr", ["sample", "--workdir", "{run}", "--sampler", "pc", "--snr", "-1"], "snr > 0"),
    ("output that is not .npz", ["sample", "--workdir", "{run}", "--num", "4", "--out", "{run}/samples.txt"],
     "must end in .npz"),
    ("unknown split", ["likelihood", "--workdir", "{run}", "--split", "val"], "--split must be test or train"),
    ("negative likelihood examples", ["likelihood", "--workdir", "{run}", "--num", "-5"], "argument --num: expected a positive integer"),
    ("image metrics of a toy", ["evaluate", "--workdir", "{run}", "--num", "4"], "evaluate scores images"),
    ("overrides outside train", ["sample", "--workdir", "{run}", "--config.seed=1"], "apply to `diffjax train` only"),
    ("unknown command", ["frobnicate"], "invalid choice: 'frobnicate'"),
    ("unknown flag", ["sample", "--workdir", "{run}", "--heat", "2"], "unrecognised arguments"),
    ("superposing one run", ["sample", "--workdir", "{run}", "--superpose", "or"], "two or more runs"),
    ("two runs without --superpose", ["sample", "--workdir", "{run}", "--workdir", "{run}"], "needs --superpose or|and"),
    ("an unknown superposition", ["sample", "--workdir", "{run}", "--workdir", "{run}", "--superpose", "xor"],
     "argument --superpose: invalid choice: 'xor'"),
    ("OR weights that are not numbers", ["sample", "--workdir", "{run}", "--workdir", "{run}", "--superpose", "or",
                                         "--weights", "a,b"], "--weights must be comma-separated numbers"),
]


@pytest.mark.xdist_group("battery")  # one worker: the trained run is a module fixture
@pytest.mark.parametrize("label,argv,pattern", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_the_command_rejects_bad_input_in_one_line_and_keeps_the_files(runs, capsys, label, argv, pattern):
    argv = [a.format(**runs) for a in argv]
    before = _digest(runs["root"])
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as e:  # argparse
        status = e.code
    err = capsys.readouterr().err.strip()
    assert status == 2, f"{label}: exit status {status}; stderr {err!r}"
    assert len(err.splitlines()) == 1, f"{label}: expected one line on stderr, got:\n{err}"
    assert pattern in err, f"{label}: {err!r} does not say {pattern!r}"
    after = _digest(runs["root"])
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"{label}: files changed: {changed}"
