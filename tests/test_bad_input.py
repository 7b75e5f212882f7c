"""Bad input, the battery (issue 14): malformed inputs across the public API and the ``diffjax``
command each get one clear line that says what was expected, and leave the user's files as they were.

API cases raise ValueError or TypeError with a one-line message matching the expected text. CLI
cases run ``diffjax.cli.main`` in-process against a tiny trained toy run: exit status 2, exactly one
line on stderr, and every file of the run (checkpoints, samples, logs) byte-identical afterwards.
"""

import hashlib
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import mixture_2d, read_only_copy

from diffjax import GaussianMixture, VESDE, VPSDE, data, losses, models
from diffjax import samplers as S
from diffjax.cli import main
from diffjax.likelihood import bits_per_dim, log_likelihood
from diffjax.results import NonFiniteError
from diffjax.score import make_score_model
from diffjax.processes import EDM
from diffjax.run import files
from diffjax.superposition import superposition_sample

SDE = VPSDE()
GM = mixture_2d()
SCORE = GM.score_fn(SDE)
KEY = jax.random.PRNGKey(0)
X = jnp.zeros((4, 2))
TS = S.uniform_timesteps(SDE, 3)


def _nan_data():
    return jnp.array([[0.0, 1.0], [jnp.nan, 0.0]])


def _nan_score(x, t):
    """The mixture's score, NaN for examples right of 0 below t = 0.5 (a network that broke there)."""
    s = GM.score(x, SDE, t)
    return jnp.where((t[:, None] < 0.5) & (x[:, :1] > 0), jnp.nan, s)


X_BOTH = jnp.array([[-1.0, 0.0], [1.0, 0.0], [-2.0, 1.0], [2.0, 1.0]])  # two examples on each side
MLP = models.MLPScoreNet(hidden=(8,))
MLP_PARAMS = MLP.init(KEY, jnp.zeros((1, 2)), jnp.ones((1,)))
DSM = losses.get_dsm_loss_fn(SDE, make_score_model(MLP.apply, SDE, labels="score_sde"))
FLAT = GaussianMixture(jnp.ones(1), jnp.zeros((1, 2)), jnp.eye(2)[None])


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
    ("zero steps in a grid", lambda: S.karras_timesteps(SDE, 0), ValueError, r"an integer in \[1, 1e\+07\]; got 0"),
    ("grid t_end outside (0, T)", lambda: S.log_snr_timesteps(SDE, 5, t_end=1.5), ValueError, r"t_end must lie in \(0, T\)"),
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
    ("NaN data in the likelihood", lambda: log_likelihood(SDE, SCORE, KEY, _nan_data()), ValueError, "NaN or Inf"),
    ("integer data in the likelihood", lambda: log_likelihood(SDE, SCORE, KEY, jnp.zeros((2, 2), jnp.int32)),
     TypeError, "must be floating point"),
    ("likelihood t_end outside (0, T)", lambda: log_likelihood(SDE, SCORE, KEY, X, t_end=0.0), ValueError,
     r"t_end must lie in \(0, T\)"),
    ("unknown divergence", lambda: log_likelihood(SDE, SCORE, KEY, X, divergence="trace"), ValueError,
     "unknown divergence"),
    ("levels out of range", lambda: bits_per_dim(SDE, SCORE, KEY, jnp.full((2, 2), 300), levels=256), ValueError,
     "levels"),
    ("unknown prediction", lambda: make_score_model(lambda p, x, l: x, SDE, prediction="noise", labels="score_sde"), ValueError,
     "unknown prediction type 'noise'"),
    ("unknown network", lambda: models.get_model("unet9000"), ValueError, "unet9000"),
    ("empty dataset", lambda: data.ArrayLoader(np.zeros((0, 2), np.float32), None, 4), ValueError, "dataset is empty"),
    ("NaN in a dataset", lambda: data.ArrayLoader(np.full((8, 2), np.nan, np.float32), None, 4), ValueError,
     "NaN or Inf"),
    ("batch larger than the data", lambda: data.ArrayLoader(np.zeros((8, 2), np.float32), None, 16), ValueError,
     "larger than the data"),
    # --- issue 27: crashes that were tracebacks -------------------------------------------------
    ("a step on a process class", lambda: S.ddim(VPSDE), TypeError, r"process instance such as VPSDE\(\)"),
    ("a corrector on a process class", lambda: S.langevin(EDM), TypeError, r"process instance such as EDM\(\)"),
    ("prior_sample with an int shape", lambda: S.prior_sample(SDE, KEY, 4), TypeError, r"shape must be a tuple"),
    ("prior_sample with a zero dim", lambda: S.prior_sample(SDE, KEY, (4, 0)), ValueError, "positive integers"),
    ("a string hyper-parameter of a process", lambda: VPSDE(beta_min="0.1"), TypeError,
     "VPSDE: beta_min must be a number; got '0.1'"),
    ("a string hyper-parameter of a step", lambda: S.ddim(SDE, eta="0.5"), TypeError, "ddim: eta must be a number"),
    ("a string snr", lambda: S.langevin(SDE, snr="0.16"), TypeError, "langevin: snr must be a number"),
    ("a bool order", lambda: S.unipc(SDE, order=True), TypeError, "order must be an integer"),
    ("a Flax module for apply", lambda: make_score_model(MLP, SDE, labels="score_sde"), TypeError, r"pass net.apply"),
    ("integer data to a loss", lambda: DSM(KEY, MLP_PARAMS, jnp.zeros((4, 2), jnp.int32)), TypeError,
     "the loss takes floating-point data"),
    ("max_steps = 0 in ode_sample", lambda: S.ode_sample(SDE, SCORE, KEY, X, max_steps=0), ValueError,
     "max_steps must be an integer >= 1"),
    ("max_steps = 0 in the likelihood", lambda: log_likelihood(SDE, SCORE, KEY, X, max_steps=0), ValueError,
     "max_steps must be an integer >= 1"),
    ("the likelihood in the old order", lambda: log_likelihood(KEY, SDE, SCORE, X), TypeError,
     r"takes \(process, score_fn, key, x\) since diffjax 0.2"),
    ("a fit and a process swapped", lambda: S.gaussian_score(S.fit_gaussian(X), SDE), TypeError,
     r"takes \(process, fit\) since diffjax 0.2"),
    ("a result unpacked as a tuple", lambda: tuple(S.sample(S.ddim(SDE), SCORE, KEY, X, TS)), TypeError,
     r"SampleResult is not a tuple; read its fields .x, .nfe"),
    # --- issue 27: values accepted silently -------------------------------------------------------
    ("an infinite beta_max", lambda: VPSDE(beta_max=float("inf")), ValueError, "VPSDE: beta_max must be finite"),
    ("an infinite EDM sigma_max", lambda: EDM(sigma_max=float("inf")), ValueError, "EDM: sigma_max must be finite"),
    ("a NaN VE sigma_max", lambda: VESDE(sigma_max=jnp.array(jnp.nan)), ValueError, "sigma_max must be finite"),
    ("an infinite Langevin snr", lambda: S.langevin(SDE, snr=float("inf")), ValueError, "snr must be finite"),
    ("a mixture with a negative weight", lambda: GaussianMixture(jnp.array([1.2, -0.2]), GM.means, GM.covs),
     ValueError, "weights must be >= 0 and sum to 1"),
    ("a mixture whose weights do not sum to 1", lambda: GaussianMixture(jnp.array([1.0, 1.0]), GM.means, GM.covs),
     ValueError, r"sum to 1; got \[1.0, 1.0\] \(sum 2\)"),
    ("a covariance that is not PSD", lambda: GaussianMixture(jnp.ones(1), jnp.zeros((1, 2)),
                                                             jnp.array([[[1.0, 2.0], [2.0, 1.0]]])),
     ValueError, "covariance 0 is not positive semi-definite"),
    ("a mixture with a NaN mean", lambda: GaussianMixture(jnp.ones(1), jnp.full((1, 2), jnp.nan), jnp.eye(2)[None]),
     ValueError, "must be finite"),
    ("a Gaussian fit of NaN data", lambda: S.fit_gaussian(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]])),
     ValueError, "NaN or Inf in 1 of 3 examples"),
    ("a fit holding NaN", lambda: S.teleport_t_skip(SDE, S.GaussianFit(np.zeros(2), np.array([np.nan, 1.0]),
                                                                       np.eye(2))), ValueError, "holds NaN or Inf"),
    ("NaN data to a loss", lambda: DSM(KEY, MLP_PARAMS, _nan_data()), ValueError, "holds NaN or Inf in 1 of 2"),
    ("a NaN x_init", lambda: S.sample(S.ddim(SDE), SCORE, KEY, X.at[1, 0].set(jnp.nan), TS), ValueError,
     r"x_init holds NaN or Inf in 1 of 4 examples \(first: example 1\)"),
    ("a score that turns NaN while sampling", lambda: S.sample(S.ddim(SDE), _nan_score, KEY, X_BOTH,
                                                               S.uniform_timesteps(SDE, 10)),
     NonFiniteError, r"sample: 2 of 4 examples became NaN or Inf, the first at update \d"),
    ("a score that turns NaN in the adaptive ODE", lambda: S.ode_sample(SDE, _nan_score, KEY, X_BOTH, max_steps=64),
     NonFiniteError, r"ode_sample: 2 of 4 examples became NaN or Inf, the first at adaptive step \d+ \(example 1\)"),
    ("a score that turns NaN in the likelihood", lambda: log_likelihood(SDE, _nan_score, KEY, X_BOTH),
     NonFiniteError, "log_likelihood: 2 of 4 examples became NaN or Inf"),
    ("a score that turns NaN in a superposition", lambda: superposition_sample(
        SDE, [_nan_score, FLAT.score_fn(SDE)], KEY, X_BOTH, S.uniform_timesteps(SDE, 10)),
     NonFiniteError, r"superposition_sample: \d of 4 examples became NaN or Inf"),
    ("a score that turns NaN with the tracked density", lambda: S.sample_with_log_density(
        S.euler_maruyama(SDE), _nan_score, KEY, X_BOTH, S.uniform_timesteps(SDE, 10)),
     NonFiniteError, r"sample_with_log_density: \d of 4 examples became NaN or Inf"),
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
       "--config.sampling.num_steps=3", "--config.eval.bpd_num_examples=0"]


def _array_files(step_dir):
    """The state's array files of one checkpoint step, largest first (orbax's ocdbt data files)."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs
             if os.sep + "d" + os.sep in os.path.join(d, f) and "state" in d]
    return sorted(files, key=os.path.getsize, reverse=True)


def _corrupt(run, kind):
    """Damage the latest checkpoint step of a copy of a run in one of the ways a disk or a copy can."""
    ckpts = os.path.join(run, "checkpoints")
    run = os.path.join(ckpts, str(max(int(d) for d in os.listdir(ckpts) if d.isdigit())))
    arrays = _array_files(run)
    if kind == "garbled":  # 256 bytes in the middle of the largest array file replaced
        path = arrays[0]
        with open(path, "r+b") as f:
            f.seek(max(0, os.path.getsize(path) // 2 - 128))
            f.write(np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        with open(arrays[0], "r+b") as f:
            f.truncate(os.path.getsize(arrays[0]) // 2)
    elif kind == "missing":
        os.remove(arrays[-1])
    elif kind == "zeroed_manifest":
        manifest = [os.path.join(d, f) for d, _, fs in os.walk(run) for f in fs if f == "manifest.ocdbt"][0]
        with open(manifest, "r+b") as f:
            f.write(bytes(os.path.getsize(manifest)))
    elif kind == "no_digest":
        os.remove(os.path.join(run, "diffjax_digest.json"))
    elif kind == "every_array_cut":  # the battery's first corruption: every array file cut short
        for path in arrays:
            with open(path, "r+b") as f:
                f.truncate(16)


CORRUPTIONS = ("garbled", "truncated", "missing", "zeroed_manifest", "no_digest", "every_array_cut")


def _damage(run, kind):
    """Issue 27 review: damage a copy of a run in a way that once slipped through."""
    ckpts = os.path.join(run, "checkpoints")
    step = os.path.join(ckpts, "2")
    if kind == "renamed_step":  # step 2 renamed to 6: it would resume 4 steps ahead with step 2's state
        os.rename(step, os.path.join(ckpts, "6"))
    elif kind == "digest_null":
        _write(os.path.join(step, "diffjax_digest.json"), '{"step": 2, "files": null}')
    elif kind == "fifo":  # an array file replaced by a named pipe: opening it would block forever
        path = _array_files(step)[0]
        os.remove(path)
        os.mkfifo(path)
    elif kind == "user_numbered_folder":  # orbax would delete it as an old step
        os.makedirs(os.path.join(ckpts, "1"))
        _write(os.path.join(ckpts, "1", "weights.txt"), "mine")
    elif kind == "tensorboard_file":
        shutil.rmtree(os.path.join(run, "tensorboard"), ignore_errors=True)
        _write(os.path.join(run, "tensorboard"), "my notes")
    else:
        raise ValueError(kind)


DAMAGES = ("renamed_step", "digest_null", "fifo", "user_numbered_folder", "tensorboard_file")


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("battery")
    run = str(root / "toy")
    assert main(["train", "--workdir", run, *TOY]) == 0
    assert main(["sample", "--workdir", run, "--num", "4", "--steps", "3", "--sampler", "ddim"]) == 0
    other = str(root / "toy_subvp")  # a run of another process, for superposition
    assert main(["train", "--workdir", other, *TOY, "--config.sde.name=subvpsde"]) == 0
    paths = {"run": run, "other": other, "root": str(root)}
    for kind in CORRUPTIONS:
        paths[kind] = str(root / f"corrupt_{kind}")
        shutil.copytree(run, paths[kind])
        _corrupt(paths[kind], kind)
    paths["corrupt"] = paths["every_array_cut"]
    for kind in DAMAGES:
        paths[kind] = str(root / f"damaged_{kind}")
        shutil.copytree(run, paths[kind])
        _damage(paths[kind], kind)
    # a run whose samples/ and eval/ hold the user's own files under the names diffjax would pick
    for name, rel in (("user_samples", "samples/samples_2.npz"), ("user_png", "samples/samples_2.png"),
                      ("user_fp", "eval/fp_residual_2.json")):
        paths[name] = str(root / name)
        shutil.copytree(run, paths[name])
        os.makedirs(os.path.dirname(os.path.join(paths[name], rel)), exist_ok=True)
        for stale in ("samples_2.npz", "samples_2.png"):
            if os.path.exists(os.path.join(paths[name], "samples", stale)):
                os.remove(os.path.join(paths[name], "samples", stale))
        if rel.endswith(".npz"):
            np.savez(os.path.join(paths[name], rel), mine=np.arange(3))
        else:
            _write(os.path.join(paths[name], rel), '{"mine": 1}')
    os.symlink(str(root / "nowhere.npz"), str(root / "a_link.npz"))
    paths["link"] = str(root / "a_link.npz")
    paths["sysexit"] = _write(root / "sysexit.py", "import sys\nsys.exit(0)\n")
    empty = root / "empty"
    empty.mkdir()
    paths["empty"] = str(empty)
    paths["file"] = _write(root / "not_a_dir", "my notes")
    paths["broken"] = _write(root / "broken_config.py", "def get_config(:\n")
    # a user's own folders, which train must not take over
    user = root / "my_project"
    user.mkdir()
    for name, text in (("config.json", '{"mine": 1}'), ("results.json", "[]"), ("notes.txt", "keep me")):
        _write(user / name, text)
    np.savez(user / "results.npz", mine=np.arange(3))
    _write(user / "figure.png", "not really a png")
    paths["user"] = str(user)
    mine = root / "my_checkpoints"
    (mine / "checkpoints" / "7").mkdir(parents=True)
    _write(mine / "config.json", "{}")
    _write(mine / "checkpoints" / "7" / "weights.bin", "my weights")
    paths["user_ckpt"] = str(mine)
    (root / "a_folder.npz").mkdir()
    paths["folder_npz"] = str(root / "a_folder.npz")
    # config files of every shape a user writes
    paths["dict_config"] = _write(root / "dict_config.py", "def get_config():\n    return {'sampling': {'num_sample': 5}}\n")
    paths["list_config"] = _write(root / "list_config.py", "def get_config():\n    return [1, 2]\n")
    paths["misspelled"] = _write(root / "misspelled.py", "from diffjax.configs import load_config\n\n\ndef get_config():\n"
                                 "    c = load_config('toy2d')\n    c.sampling.num_sample = 5\n    return c\n")
    paths["infinite"] = _write(root / "infinite.py", "from diffjax.configs import load_config\n\n\ndef get_config():\n"
                               "    c = load_config('toy2d')\n    c.optim.lr = float('inf')\n    return c\n")
    paths["json_bad"] = _write(root / "saved_config.json", '{"training": {"n_iter": 3}}')
    with read_only_copy(run, str(root)) as ro:
        paths["ro"] = ro
        yield paths


def _digest(root):
    out = {}
    for d, _, names in os.walk(root):
        for f in names:
            path = os.path.join(d, f)
            if not os.path.isfile(path) or os.path.islink(path):  # a pipe or a link of the battery: never opened
                out[os.path.relpath(path, root)] = "link" if os.path.islink(path) else "special"
                continue
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
    ("negative number of samples", ["sample", "--workdir", "{run}", "--num", "-3"], "argument --num: expected a positive integer in [1, 1e+09], got '-3'"),
    ("zero steps", ["sample", "--workdir", "{run}", "--steps", "0"], "argument --steps: expected a number of steps in [1, 1e+06], got '0'"),
    ("zero batch", ["sample", "--workdir", "{run}", "--batch", "0"], "argument --batch: expected a positive integer in [1, 1e+09], got '0'"),
    ("negative snr", ["sample", "--workdir", "{run}", "--sampler", "pc", "--snr", "-1"], "snr > 0"),
    ("output that is not .npz", ["sample", "--workdir", "{run}", "--num", "4", "--out", "{run}/samples.txt"],
     "must end in .npz"),
    ("unknown split", ["likelihood", "--workdir", "{run}", "--split", "val"], "--split must be test or train"),
    ("negative likelihood examples", ["likelihood", "--workdir", "{run}", "--num", "-5"], "argument --num: expected a positive integer"),
    ("image metrics of a toy", ["evaluate", "--workdir", "{run}", "--num", "4"], "evaluate scores images"),
    ("overrides outside train", ["sample", "--workdir", "{run}", "--config.seed=1"], "apply to `diffjax train` and `diffjax distill` only"),
    # the commands added since issue 27: fit-solver, inverse problems, distillation, autoguidance
    ("fit-solver with one evaluation", ["fit-solver", "--workdir", "{run}", "--nfe", "1"],
     "argument --nfe: expected a number of evaluations in [2, 1e+03]"),
    ("fit-solver of an unknown sampler", ["fit-solver", "--workdir", "{run}", "--nfe", "5", "--sampler", "warp"],
     "unknown sampler 'warp'"),
    ("fit-solver of a stochastic sampler", ["fit-solver", "--workdir", "{run}", "--nfe", "5", "--sampler",
                                            "euler_maruyama"], "fits one-evaluation deterministic steps"),
    ("fit-solver of a folder without a run", ["fit-solver", "--workdir", "{empty}", "--nfe", "5"], "no checkpoints in"),
    ("sampling a fitted solver never fitted", ["sample", "--workdir", "{run}", "--solver", "fitted"],
     "no fitted solver in"),
    ("an inverse problem without a measurement", ["sample", "--workdir", "{run}", "--inverse", "inpaint"],
     "needs both --inverse KIND and --measurement FILE.npz"),
    ("an inverse problem on a toy run", ["sample", "--workdir", "{run}", "--inverse", "inpaint", "--measurement",
                                         "{root}/none.npz"], "inverse problems here are on image runs"),
    ("an inverse method without --inverse", ["sample", "--workdir", "{run}", "--method", "dps"],
     "--method applies to an inverse problem"),
    ("particles without --inverse", ["sample", "--workdir", "{run}", "--particles", "8"],
     "--particles applies to an inverse problem"),
    ("an unknown inverse method", ["sample", "--workdir", "{run}", "--inverse", "inpaint", "--measurement",
                                   "{root}/none.npz", "--method", "magic"], "argument --method: invalid choice: 'magic'"),
    ("distilling into the teacher", ["distill", "--teacher", "{run}", "--workdir", "{run}"],
     "--workdir must differ from --teacher"),
    ("distilling from a folder without a run", ["distill", "--teacher", "{empty}", "--workdir", "{root}/student"],
     "no checkpoints in"),
    ("an unknown distillation", ["distill", "--teacher", "{run}", "--workdir", "{root}/student", "--method", "warp"],
     "argument --method: invalid choice: 'warp'"),
    ("distilling for zero steps", ["distill", "--teacher", "{run}", "--workdir", "{root}/student", "--iters", "0"],
     "argument --iters: expected a positive integer"),
    ("a guide that is not a run", ["sample", "--workdir", "{run}", "--guide", "{empty}"], "no checkpoints in"),
    ("unknown command", ["frobnicate"], "invalid choice: 'frobnicate'"),
    ("unknown flag", ["sample", "--workdir", "{run}", "--heat", "2"], "unrecognised arguments"),
    ("superposing one run", ["sample", "--workdir", "{run}", "--superpose", "or"], "two or more runs"),
    ("two runs without --superpose", ["sample", "--workdir", "{run}", "--workdir", "{run}"], "needs --superpose or|and"),
    ("an unknown superposition", ["sample", "--workdir", "{run}", "--workdir", "{run}", "--superpose", "xor"],
     "argument --superpose: invalid choice: 'xor'"),
    ("OR weights that are not numbers", ["sample", "--workdir", "{run}", "--workdir", "{run}", "--superpose", "or",
                                         "--weights", "a,b"], "--weights must be comma-separated numbers"),
    # --- issue 27: data loss ------------------------------------------------------------------------
    ("train into a folder of the user's files", ["train", "--workdir", "{user}", *TOY],
     "is not a diffjax run and not empty (it holds config.json, figure.png, notes.txt and 2 more)"),
    ("train into a folder with a checkpoints/ of the user's", ["train", "--workdir", "{user_ckpt}", *TOY],
     "is not a diffjax run and not empty"),
    ("train into a non-empty folder by default name", ["train", "--workdir", "{root}", *TOY],
     "is not a diffjax run and not empty"),
    ("sample over the user's own .npz", ["sample", "--workdir", "{run}", "--num", "4", "--out", "{user}/results.npz"],
     "exists and was not written by diffjax"),
    ("sample beside the user's own .png", ["sample", "--workdir", "{run}", "--num", "4", "--out", "{user}/figure.npz"],
     "figure.png (written beside it) exists and is not diffjax's"),
    ("superpose over the user's own .npz", ["sample", "--workdir", "{run}", "--workdir", "{run}", "--superpose", "or",
                                           "--out", "{user}/results.npz"], "exists and was not written by diffjax"),
    *[(f"sample a checkpoint: {kind}", ["sample", "--workdir", "{" + kind + "}", "--num", "4"],
       "could not restore step 2") for kind in CORRUPTIONS],
    *[(f"resume a checkpoint: {kind}", ["train", "--workdir", "{" + kind + "}", *TOY], "could not restore step 2")
      for kind in ("garbled", "zeroed_manifest", "no_digest")],
    # --- issue 27: crashes --------------------------------------------------------------------------
    ("a config file returning a list", ["train", "--config", "{list_config}"],
     "gave a list; expected an ml_collections.ConfigDict"),
    ("a config file returning a dict with a misspelled key", ["train", "--config", "{dict_config}"],
     "unknown config key 'sampling.num_sample' (did you mean 'num_samples'?)"),
    ("a saved config.json with a misspelled key", ["train", "--config", "{json_bad}"],
     "unknown config key 'training.n_iter' (did you mean 'n_iters'?)"),
    ("train in a read-only folder", ["train", "--workdir", "{ro}/new_run", *TOY], "--workdir {ro}/new_run is not writable"),
    ("sample a read-only run", ["sample", "--workdir", "{ro}/toy", "--num", "4", "--steps", "2"],
     "the run's samples folder (or give --out)"),
    ("the FP residual of a read-only run", ["evaluate", "--workdir", "{ro}/toy", "--fp-residual", "--num", "4"],
     "the run's eval folder {ro}/toy/eval is not writable"),
    ("--out in a read-only folder", ["sample", "--workdir", "{run}", "--num", "4", "--out", "{ro}/x.npz"],
     "is not writable"),
    ("--out naming a folder", ["sample", "--workdir", "{run}", "--num", "4", "--out", "{folder_npz}"],
     "is a folder; expected a file path ending in .npz"),
    ("--out under a file", ["sample", "--workdir", "{run}", "--num", "4", "--out", "{file}/x.npz"],
     "is a file, so nothing can be written under it"),
    ("a coordinator port out of range", ["train", *TOY, "--distributed", "--coordinator", "localhost:99999",
                                         "--num-processes", "2", "--process-id", "0"], "port must be an integer in 1..65535"),
    ("a coordinator without a port", ["train", *TOY, "--distributed", "--coordinator", "node0", "--num-processes", "2",
                                      "--process-id", "0"], "the coordinator must be HOST:PORT"),
    ("a coordinator that does not resolve", ["train", *TOY, "--distributed", "--coordinator",
                                             "no-such-host.invalid:8476", "--num-processes", "2", "--process-id", "0"],
     "does not resolve"),
    ("a process id beyond the processes", ["train", *TOY, "--distributed", "--coordinator", "localhost:8476",
                                           "--num-processes", "2", "--process-id", "2"], "0 <= process_id < num_processes"),
    # --- issue 27: values accepted silently ---------------------------------------------------------
    ("an override of 1e400", ["train", *TOY, "--workdir", "{root}/never", "--config.optim.lr=1e400"],
     "config key 'optim.lr' must be finite; got '1e400'"),
    ("an override of -1e999 for an integer", ["train", *TOY, "--workdir", "{root}/never",
                                             "--config.training.batch_size=-1e999"], "must be finite"),
    ("a config file with a misspelled key", ["train", "--config", "{misspelled}"],
     "unknown config key 'sampling.num_sample' (did you mean 'num_samples'?)"),
    ("a config file with an infinite value", ["train", "--config", "{infinite}"],
     "config key 'optim.lr' must be finite; got inf"),
    # --- issue 27 review: what once slipped through -------------------------------------------------
    *[(f"sample a damaged run: {kind}", ["sample", "--workdir", "{" + kind + "}", "--num", "4", "--steps", "2"],
       msg) for kind, msg in (
        ("renamed_step", "it was saved as step 2"), ("digest_null", "diffjax_digest.json is unreadable"),
        ("fifo", "is not a regular file"), ("user_numbered_folder", "numbered like a step but not a saved checkpoint"))],
    *[(f"resume a damaged run: {kind}", ["train", "--workdir", "{" + kind + "}", *TOY], msg) for kind, msg in (
        ("renamed_step", "it was saved as step 2"), ("user_numbered_folder", "numbered like a step"),
        ("tensorboard_file", "diffjax writes a folder of that name"))],
    ("sample over the user's file at the default name", ["sample", "--workdir", "{user_samples}", "--num", "4",
                                                        "--steps", "2"], "exists and was not written by diffjax"),
    ("sample beside the user's .png at the default name", ["sample", "--workdir", "{user_png}", "--num", "4",
                                                          "--steps", "2"], "(written beside it) exists and is not diffjax's"),
    ("the FP residual over the user's .json", ["evaluate", "--workdir", "{user_fp}", "--fp-residual", "--num", "4"],
     "exists and was not written by diffjax"),
    ("--out a symbolic link", ["sample", "--workdir", "{run}", "--num", "4", "--out", "{link}"], "is a symbolic link"),
    ("--out inside the run's checkpoints", ["sample", "--workdir", "{run}", "--num", "4", "--out",
                                            "{run}/checkpoints/2/mine.npz"], "lies inside the checkpoints of the run"),
    ("an empty --workdir", ["train", "--workdir", "", *TOY], "--workdir is empty"),
    ("sample a folder that is not a run", ["sample", "--workdir", "{user_ckpt}", "--num", "4"], "is not a diffjax run"),
    ("keep_last 0", ["train", "--workdir", "{root}/never", *TOY, "--config.training.keep_last=0"],
     "'training.keep_last' must be >= 1"),
    ("Adam beta1 1.5", ["train", "--workdir", "{root}/never", *TOY, "--config.optim.beta1=1.5"],
     "'optim.beta1' must be in [0, 1)"),
    ("a seed of 2**70", ["sample", "--workdir", "{run}", "--seed", str(2 ** 70)], "expected a seed in [0, 9e+18]"),
    ("--order for a sampler of fixed order", ["sample", "--workdir", "{run}", "--num", "4", "--sampler", "ddim",
                                              "--order", "2"], "'ddim' has a fixed order"),
    ("a config file that calls sys.exit", ["train", "--config", "{sysexit}"], "could not be run (SystemExit: 0)"),
    ("unknown arguments holding a newline", ["sample", "--workdir", "{run}", "foo\nbar"], "unrecognised arguments: 'foo"),
    ("a peer timeout of NaN", ["train", *TOY, "--distributed", "--peer-timeout", "nan"],
     "expected a positive number of seconds"),
    ("superposing runs of different processes", ["sample", "--workdir", "{run}", "--workdir", "{other}",
                                                "--superpose", "or"],
     "are of different processes (sde.name: 'vpsde' vs 'subvpsde'); superposition needs models of one process"),
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
    assert len(err) < 400, f"{label}: a message of {len(err)} characters: {err!r}"
    pattern = pattern.format(**runs)
    assert pattern in err, f"{label}: {err!r} does not say {pattern!r}"
    after = _digest(runs["root"])
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"{label}: files changed: {changed}"


# ----------------------------------------------------------------------------------------------
# issue 27: what is supported instead of refused, and the documented routes


@pytest.mark.xdist_group("battery")
def test_a_dict_config_and_a_saved_config_json_train(runs, tmp_path):
    """get_config() may return a plain dict of the keys it sets; a run's saved config.json is a config."""
    path = _write(tmp_path / "mine.py", "def get_config():\n    return {'sde': {'name': 'vpsde'}, 'model': "
                  "{'name': 'mlp', 'options': {'hidden': (16,)}}, 'data': {'dataset': 'toy:gaussian_mixture', "
                  "'image_size': 0, 'num_channels': 0, 'random_flip': False}}\n")
    assert main(["train", "--config", path, "--workdir", str(tmp_path / "from_dict"), *TOY[2:]]) == 0
    copy = str(tmp_path / "from_json")
    assert main(["train", "--config", os.path.join(runs["run"], "config.json"), "--workdir", copy, "--no-progress"]) == 0
    with open(os.path.join(runs["run"], "config.json")) as a, open(os.path.join(copy, "config.json")) as b:
        assert json.load(a) == json.load(b)


@pytest.mark.xdist_group("battery")
def test_a_half_written_gaussian_fit_is_fitted_again(runs, tmp_path, capsys):
    run = str(tmp_path / "teleport")
    shutil.copytree(runs["run"], run)
    args = ["sample", "--workdir", run, "--num", "4", "--sampler", "unipc", "--steps", "4", "--teleport", "auto"]
    assert main(args) == 0
    fit_path = os.path.join(run, "gaussian_fit.npz")
    whole = S.GaussianFit.load(fit_path)
    with open(fit_path, "r+b") as f:  # cut short, as a write interrupted before the atomic rename was
        f.truncate(os.path.getsize(fit_path) // 3)
    capsys.readouterr()
    assert main(args) == 0
    assert "is not a saved GaussianFit" in capsys.readouterr().err
    again = S.GaussianFit.load(fit_path)
    np.testing.assert_array_equal(again.mean, whole.mean)
    assert not [f for f in os.listdir(run) if f.startswith(".tmp")]  # no temporary file left behind


@pytest.mark.xdist_group("battery")
def test_restore_intact_moves_a_corrupt_step_aside_and_resumes_the_newest_intact(tmp_path, capsys):
    run = str(tmp_path / "two_steps")
    toy = [a for a in TOY if not a.startswith("--config.training.n_iters")]
    assert main(["train", "--workdir", run, *toy, "--config.training.n_iters=4"]) == 0
    _corrupt(run, "garbled")  # 256 bytes of the latest step (4)
    before = _digest(run)
    capsys.readouterr()
    assert main(["train", "--workdir", run, *toy, "--config.training.n_iters=6"]) == 2
    assert "could not restore step 4" in capsys.readouterr().err and _digest(run) == before
    assert main(["train", "--workdir", run, *toy, "--config.training.n_iters=6", "--restore-intact"]) == 0
    out = capsys.readouterr().out
    assert "step 4 failed its digest and was moved to" in out and "resuming from step 2" in out
    assert sorted(os.listdir(os.path.join(run, "corrupt_checkpoints"))) == ["4"]
    from diffjax import checkpoint
    assert checkpoint.Checkpointer(os.path.join(run, "checkpoints")).all_steps() == [2, 4, 6]  # 4 saved anew


def test_a_save_cut_short_by_a_kill_is_set_aside_and_the_run_resumes(tmp_path, capsys):
    """A kill between orbax's commit of step 4 and its digest (what a slower CI machine hit): the save's
    marker is still there, so train says the save was cut short, moves the step to
    incomplete_checkpoints/ and resumes from step 2; the same step without the marker (a digest
    removed afterwards) is still refused."""
    from diffjax import checkpoint

    run = str(tmp_path / "killed")
    toy = [a for a in TOY if not a.startswith("--config.training.n_iters")]
    assert main(["train", "--workdir", run, *toy, "--config.training.n_iters=4"]) == 0
    ckpts = os.path.join(run, "checkpoints")
    assert not [f for f in os.listdir(ckpts) if f.startswith(checkpoint.SAVING_PREFIX)]  # removed after each save
    cut = str(tmp_path / "cut")
    shutil.copytree(run, cut)
    os.remove(os.path.join(cut, "checkpoints", "4", checkpoint.DIGEST_FILE))
    _write(os.path.join(cut, "checkpoints", checkpoint.SAVING_PREFIX + "4"), "started")
    _write(os.path.join(cut, "checkpoints", checkpoint.SAVING_PREFIX + "9"), "a save killed before orbax's commit")
    with open(os.path.join(cut, "checkpoints", "4", "state", "_METADATA"), "rb") as f:
        step4 = f.read()
    capsys.readouterr()
    assert main(["train", "--workdir", cut, *toy, "--config.training.n_iters=6"]) == 0
    out = capsys.readouterr().out
    assert "step 4: the save was cut short" in out and "resuming" in out and "from step 2" in out
    with open(os.path.join(cut, "incomplete_checkpoints", "4", "state", "_METADATA"), "rb") as f:
        assert f.read() == step4                                            # nothing lost
    assert checkpoint.Checkpointer(os.path.join(cut, "checkpoints")).all_steps() == [2, 4, 6]
    assert not [f for f in os.listdir(os.path.join(cut, "checkpoints")) if f.startswith(checkpoint.SAVING_PREFIX)]

    removed = str(tmp_path / "removed")  # no marker: the digest went missing after the save
    shutil.copytree(run, removed)
    os.remove(os.path.join(removed, "checkpoints", "4", checkpoint.DIGEST_FILE))
    before = _digest(removed)
    assert main(["train", "--workdir", removed, *toy, "--config.training.n_iters=6"]) == 2
    assert "has no diffjax_digest.json" in capsys.readouterr().err and _digest(removed) == before


@pytest.mark.xdist_group("battery")
def test_a_run_of_an_earlier_version_loads_and_resumes(runs, tmp_path):
    """No marker and no digests (diffjax before issue 27): it samples, and resuming it adds the marker,
    with digests required from the next step on."""
    run = str(tmp_path / "old")
    shutil.copytree(runs["run"], run)
    os.remove(os.path.join(run, files.MARKER))
    for d, _, fs in os.walk(run):
        for f in fs:
            if f == "diffjax_digest.json":
                os.remove(os.path.join(d, f))
    assert main(["sample", "--workdir", run, "--num", "4", "--steps", "2", "--sampler", "ddim"]) == 0
    toy = [a for a in TOY if not a.startswith("--config.training.n_iters")]
    assert main(["train", "--workdir", run, *toy, "--config.training.n_iters=4"]) == 0
    with open(os.path.join(run, files.MARKER)) as f:
        assert json.load(f)["digests_from"] == 3
    assert os.path.isfile(os.path.join(run, "checkpoints", "4", "diffjax_digest.json"))


def test_inside_a_jit_the_result_says_which_examples_turned_nonfinite():
    """No error can be raised inside the user's jit: the result's finite flags say it instead, and
    check_finite=False returns the values outside a jit."""
    ts = S.uniform_timesteps(SDE, 10)
    finite = jax.jit(lambda x: S.sample(S.ddim(SDE), _nan_score, KEY, x, ts).finite)(X_BOTH)
    np.testing.assert_array_equal(np.asarray(finite), [True, False, True, False])
    r = S.sample(S.ddim(SDE), _nan_score, KEY, X_BOTH, ts, check_finite=False)
    steps = np.asarray(r.nonfinite_step)
    assert steps[0] == steps[2] == -1 and steps[1] >= 5 and steps[3] >= 5  # below t = 0.5: update 5 on
    assert np.all(np.isnan(np.asarray(r.x)[[1, 3]])) and np.all(np.isfinite(np.asarray(r.x)[[0, 2]]))
    lik = jax.jit(lambda x: log_likelihood(SDE, _nan_score, KEY, x).finite)(X_BOTH)
    assert not bool(lik[1]) and bool(lik[0])
