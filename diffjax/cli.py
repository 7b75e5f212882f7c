"""The ``diffjax`` command: ``train``, ``sample``, ``likelihood``, ``evaluate`` and ``fit-solver``.

    diffjax train                                   # the digits default into ./runs/digits
    diffjax train --config toy2d --workdir runs/toy --config.training.n_iters=2000
    diffjax sample --workdir runs/digits --num 64 --sampler ode --out grid.npz
    diffjax likelihood --workdir runs/digits --split test
    diffjax evaluate --workdir runs/digits --num 1000
    diffjax fit-solver --workdir runs/digits --nfe 5 && diffjax sample --workdir runs/digits --solver fitted

This module only reads the command line and calls :mod:`diffjax.run`; configs and their dotted
``--config.KEY=VALUE`` overrides live in :mod:`diffjax.configs`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

__all__ = ["main"]

# sampling flags of `sample` and `evaluate` -> the config key (sampling.KEY) each one sets, typed
SAMPLING_FLAGS = {"sampler": "method", "steps": "num_steps", "grid": "grid", "predictor": "predictor",
                  "corrector": "corrector", "snr": "snr", "guidance": "guidance_weight", "order": "order",
                  "teleport": "teleport", "solver": "solver", "nfe": "solver_nfe", "noise": "noise",
                  "guide": "guide"}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``diffjax: error: ... (see diffjax --help)``, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_in(lo: int, hi: int, what: str = "an integer"):
    """argparse type: an integer in [lo, hi] (counts far past any machine's memory are refused early)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected {what} in [{lo}, {hi:.0e}], got {text[:24]!r}")
        return value
    return parse


_positive_int = _int_in(1, 10 ** 9, "a positive integer")  # --num, --batch, --steps of train
_seed = _int_in(0, 2 ** 63 - 1, "a seed")


def _positive_float(what: str = "a positive number"):
    """argparse type: a finite number > 0."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_finite_positive = _positive_float("a positive number of seconds")
_finite_positive_number = _positive_float()




def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", default=None, help="a sampler name (dpmpp_2m, ddim, edm_heun, pc, ode, ...); "
                                                   "default: the config's sampling.method")
    p.add_argument("--steps", type=_int_in(1, 10 ** 6, "a number of steps"), default=None,
                   help="time steps of a fixed-step sampler")
    p.add_argument("--grid", default=None, help="time grid: uniform, quadratic, log_snr, karras or fitted (to the "
                                                "data's Gaussian, for the sampler and the number of steps)")
    p.add_argument("--order", type=_int_in(1, 4, "an order"), default=None,
                   help="order of unipc or dpmpp_3m (1-3), or of ipndm (1-4)")
    p.add_argument("--teleport", default=None, help="off, auto or KAPPA: start the sampler at sigma_hat = KAPPA "
                                                    "x the data's largest std, reached by the exact Gaussian flow")
    p.add_argument("--predictor", default=None, help="predictor of the pc sampler")
    p.add_argument("--corrector", default=None, help="corrector of the pc sampler (none: predictor alone)")
    p.add_argument("--snr", type=float, default=None, help="signal-to-noise ratio of the Langevin corrector")
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance weight w: classifier-free (class-conditional runs trained with label dropout), or "
                        "autoguidance with --guide")
    p.add_argument("--guide", default=None,
                   help="autoguidance: a weaker run of the same task (e.g. trained shorter) whose score guides this "
                        "one, (1 + w) s - w s_guide (Karras et al. 2024)")
    p.add_argument("--solver", default=None, help="fitted: the run's solver from `diffjax fit-solver` (in "
                                                  "WORKDIR/solvers/), or the path of a fitted solver's .npz")
    p.add_argument("--nfe", type=_int_in(2, 1000, "a number of evaluations"), default=None,
                   help="with --solver fitted: the fitted solver of this many score evaluations")
    p.add_argument("--noise", choices=("independent", "brownian"), default=None,
                   help="stochastic samplers: fresh noise per step, or one Brownian path per example whatever "
                        "the number of steps (refining a sample converges to one path)")


def _distributed_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-host (run the same command on every host)")
    g.add_argument("--distributed", action="store_true",
                   help="start jax.distributed first; without the three flags below the cluster is detected "
                        "(Cloud TPU, SLURM, Open MPI)")
    g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0's coordination service "
                                                       "(or DIFFJAX_COORDINATOR)")
    g.add_argument("--num-processes", type=_positive_int, default=None, help="processes in all "
                                                                             "(or DIFFJAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None, help="this process, 0 .. N-1 (or DIFFJAX_PROCESS_ID)")
    g.add_argument("--peer-timeout", type=_finite_positive, default=20.0,
                   help="seconds without a peer's heartbeat before this process stops (default 20)")


def _run_flags(p: argparse.ArgumentParser, num_default, num_help: str, several_workdirs: bool = False) -> None:
    if several_workdirs:
        p.add_argument("--workdir", required=True, action="append",
                       help="the run's work directory; give two or more with --superpose")
    else:
        p.add_argument("--workdir", required=True)
    p.add_argument("--num", type=_positive_int, default=num_default, help=num_help)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--batch", type=_positive_int, default=None, help="examples per compiled call")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffjax", description="Score-based generative models through SDEs, in JAX.")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{train,sample,likelihood,evaluate,fit-solver,distill}",
                                parser_class=_Parser)

    p = sub.add_parser("train", help="train a config (default: digits) in a work directory, resuming if possible",
                       epilog="Any config key can be set with --config.SECTION.KEY=VALUE, "
                              "e.g. --config.training.n_iters=2000.")
    p.add_argument("--config", default="digits", help="a config name (see diffjax.configs.names()) or a path to "
                                                      "a config file")
    p.add_argument("--workdir", default=None, help="where checkpoints, logs and samples go (default: ./runs/CONFIG)")
    p.add_argument("--steps", type=_positive_int, default=None, help="train steps (sets training.n_iters)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--restore-intact", action="store_true",
                   help="if the latest checkpoint fails its digest (corrupt), move it to WORKDIR/corrupt_checkpoints/ "
                        "and resume from the newest intact one (default: stop with an error)")
    _distributed_flags(p)

    p = sub.add_parser("sample", help="draw samples from a trained run's EMA parameters, or from the "
                                      "superposition of several runs (--superpose)")
    _run_flags(p, 64, "number of samples (default 64)", several_workdirs=True)
    _sampling_flags(p)
    p.add_argument("--out", default=None, help="output .npz (default: WORKDIR/samples/samples_STEP.npz, or "
                                               "superpose_MODE_STEP.npz in the first WORKDIR); a PNG grid is "
                                               "written beside it")
    g = p.add_argument_group("inverse problems (reconstructions written beside the measurement, FILE_METHOD.npz)")
    g.add_argument("--inverse", choices=("inpaint", "superres", "deblur", "colorize"), default=None,
                   help="the measurement's operator (see diffjax.run.inverse)")
    g.add_argument("--measurement", default=None, help="the measurement file (.npz with y in [0, 1]; "
                                                       "diffjax.run.inverse.write_measurement writes one)")
    g.add_argument("--method", choices=("pigdm", "dps", "ddnm", "project", "reddiff", "smc"), default=None,
                   help="the posterior sampler (default pigdm)")
    g.add_argument("--particles", type=_int_in(2, 100000, "a number of particles"), default=None,
                   help="smc: particles per measurement (default 64)")
    g = p.add_argument_group("superposition of runs (SuperDiff; give --workdir two or more times)")
    g.add_argument("--superpose", choices=("or", "and"), default=None,
                   help="or: sample the mixture of the runs' distributions; and: where their densities are equal")
    g.add_argument("--weights", default=None, help="OR mixture weights, comma-separated, one per run (default equal)")
    g.add_argument("--temperature", type=float, default=None, help="OR temperature T (default 1: the mixture)")
    g.add_argument("--ode", action="store_true", help="the probability-flow variant (divergences by Hutchinson; "
                                                      "default: the SDE with the Itô density estimator)")
    _distributed_flags(p)

    p = sub.add_parser("likelihood", help="bits/dim (or NLL for 2-D toys) of a data split under a trained run")
    _run_flags(p, None, "examples (default: the config's eval.bpd_num_examples)")
    p.add_argument("--split", default="test", help="test or train (default test)")
    p.add_argument("--rtol", type=float, default=None, help="ODE tolerance (default: the config's eval.bpd_rtol)")
    p.add_argument("--num-dequantizations", type=_positive_int, default=1,
                   help="importance-weighted dequantisation draws")
    _distributed_flags(p)

    p = sub.add_parser("evaluate", help="sample and print FID, KID and IS (digits features for the digits)")
    _run_flags(p, None, "number of samples (default 1000), or of test examples with --fp-residual (default 256)")
    p.add_argument("--fp-residual", action="store_true",
                   help="instead of sampling, print the score Fokker-Planck residual per t on test-split x_t "
                        "(relative to |g^2 s|; also for 2-D toys) and save it as WORKDIR/eval/fp_residual_STEP.json")
    p.add_argument("--inception", default=None,
                   help="FID InceptionV3 weights (.npz, see diffjax.metrics); needed for datasets other than digits")
    _sampling_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _distributed_flags(p)

    p = sub.add_parser("fit-solver", help="fit a solver of few evaluations to the run's own probability-flow "
                                          "paths; sample with it by --solver fitted")
    p.add_argument("--workdir", required=True)
    p.add_argument("--nfe", type=_int_in(2, 1000, "a number of evaluations"), default=5,
                   help="score evaluations per sample, the final denoising included (default 5)")
    p.add_argument("--sampler", default="ipndm",
                   help="ipndm (grid and per-update weights fitted; default), or a one-evaluation step whose grid "
                        "is fitted: unipc, dpmpp_2m, dpmpp_3m, ddim")
    p.add_argument("--paths", type=_int_in(8, 65536, "a number of paths"), default=256,
                   help="teacher paths (default 256; a quarter held out to validate)")
    p.add_argument("--teacher-points", type=_int_in(8, 4096, "a number of times"), default=64,
                   help="teacher times kept, where the grid search may place a step (default 64)")
    p.add_argument("--refine", type=_int_in(1, 256, "a refinement"), default=8,
                   help="UniPC-3 steps of the teacher between kept times (default 8)")
    p.add_argument("--iters", type=_int_in(0, 100000, "a number of iterations"), default=100,
                   help="Adam iterations of the fit (default 100), each on --batch-paths teacher paths")
    p.add_argument("--learning-rate", type=_finite_positive_number, default=0.1,
                   help="Adam's learning rate, cosine-decayed to a tenth (default 0.1)")
    p.add_argument("--batch-paths", type=_int_in(1, 65536, "a number of paths"), default=64,
                   help="teacher paths per iteration (default 64)")
    p.add_argument("--analytic-first", choices=("auto", "on", "off"), default="on",
                   help="the first update by the data's Gaussian flow (no evaluation): on (default), off, or "
                        "auto (fit both, keep the better on held-out paths)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", default=None, help="the solver's .npz (default WORKDIR/solvers/SAMPLER_nfeN.npz)")

    p = sub.add_parser("distill", help="distil a trained run into a one- or few-step student (a new run); sample "
                                       "it with `diffjax sample --workdir STUDENT --steps N`",
                       epilog="Student config keys can be set with --config.SECTION.KEY=VALUE, e.g. "
                              "--config.distill.stage_steps=500.")
    p.add_argument("--workdir", required=True, help="the student's work directory (new, or one to resume)")
    p.add_argument("--teacher", required=True, help="the trained run to distil (its work directory)")
    p.add_argument("--method", choices=("consistency", "progressive"), default="consistency",
                   help="consistency (ECT-style consistency distillation; default) or progressive (halvings)")
    p.add_argument("--target", choices=("teacher", "data"), default=None,
                   help="consistency: the teacher's Heun step (distillation; default) or the data (training)")
    p.add_argument("--iters", type=_positive_int, default=None,
                   help="training steps (per halving for progressive); default 2000 (500 per halving)")
    p.add_argument("--lr", type=_finite_positive_number, default=None, help="learning rate (default 1e-4)")
    p.add_argument("--start-steps", type=_int_in(1, 4096, "a power of two"), default=32,
                   help="progressive: the first student's DDIM steps (its teacher takes twice as many; default 32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--restore-intact", action="store_true",
                   help="as for train: resume from the newest checkpoint that passes its digest")
    _distributed_flags(p)
    return parser


def _sampling_options(args) -> dict:
    """The sampling flags given, as typed values of the config's ``sampling`` keys."""
    return {key: getattr(args, flag) for flag, key in SAMPLING_FLAGS.items() if getattr(args, flag) is not None}


def _train(args, overrides) -> int:
    from diffjax.configs import load_config
    from diffjax.run import train

    if args.steps is not None:
        overrides = [*overrides, f"training.n_iters={args.steps}"]
    config = load_config(args.config, overrides)
    name = os.path.splitext(os.path.basename(args.config))[0]
    if name == "config" and args.config.endswith(".json"):  # a run's saved config: name the run after its folder
        name = os.path.basename(os.path.dirname(os.path.abspath(args.config))) or name
    workdir = os.path.join("runs", name) if args.workdir is None else args.workdir
    result = train(config, workdir, progress=not args.no_progress, restore_intact=args.restore_intact)
    if not result.get("stopped"):
        print(f"done: step {result['step']} in {result['workdir']}")
    return 0


def _distill(args, overrides) -> int:
    from diffjax.run.distill import distill

    if args.target is not None:
        if args.method != "consistency":
            raise ValueError("--target applies to --method consistency only")
        overrides = [*overrides, f"distill.target={args.target}"]
    iters = args.iters or (2000 if args.method == "consistency" else 500)
    result = distill(args.teacher, args.workdir, args.method, iters=iters, lr=args.lr if args.lr else 1e-4,
                     start_steps=args.start_steps, overrides=[o[len("--config."):] for o in overrides],
                     progress=not args.no_progress, restore_intact=args.restore_intact)
    if not result.get("stopped"):
        print(f"done: {args.method} student{'s' if len(result['runs']) > 1 else ''} in {', '.join(result['runs'])}; "
              f"sample with `diffjax sample --workdir {args.workdir} --steps N`")
    return 0


def _float_list(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, like 0.7,0.3; got {text!r}") from None


def _superpose(args) -> int:
    import jax

    from diffjax.run import load_run, superpose, write_samples
    from diffjax.run.files import check_output_path

    workdirs = args.workdir
    if len(workdirs) < 2:
        raise ValueError(f"--superpose needs two or more runs (--workdir A --workdir B); got {len(workdirs)}")
    unused = [f"--{f}" for f in ("sampler", "order", "teleport", "predictor", "corrector", "snr", "guidance",
                                 "solver", "nfe", "noise", "method", "particles")
              if getattr(args, f) is not None]
    if unused:
        raise ValueError(f"--superpose runs its own sampler (Euler-Maruyama with the Itô density estimator, or "
                         f"Heun with --ode); {', '.join(unused)} do not apply")
    if args.superpose == "and" and (args.weights is not None or args.temperature is not None):
        raise ValueError("--weights and --temperature are OR's; --superpose and takes neither")
    weights = None if args.weights is None else _float_list(args.weights, "--weights")
    if args.out is not None:
        check_output_path(args.out, ".npz", "--out", siblings=(".png",))
    runs = [load_run(w, args.step) for w in workdirs]
    num_steps = args.steps or 1000
    out = args.out or os.path.join(workdirs[0], "samples", f"superpose_{args.superpose}_{runs[0].step}.npz")
    if args.out is None:
        check_output_path(out, ".npz", "the run's samples folder (or give --out)", siblings=(".png",))
    x, log_q, kappa, nfe = superpose(runs, jax.random.PRNGKey(args.seed), args.num, args.superpose, weights=weights,
                                     temperature=1.0 if args.temperature is None else args.temperature,
                                     num_steps=num_steps, grid=args.grid or "uniform", ode=args.ode,
                                     batch_size=args.batch)
    png = write_samples(runs[0], x, out, log_q=log_q, kappa=kappa)
    print(f"{len(x)} samples of {args.superpose.upper()}({', '.join(workdirs)}) ({'Heun, probability flow' if args.ode else 'Euler-Maruyama'}, "
          f"{num_steps} steps, {nfe} score evaluations each) -> {out}, {png}")
    return 0


def _sample(args) -> int:
    import jax

    from diffjax.run import generate, load_run, write_samples
    from diffjax.run.build import sampler_name
    from diffjax.run.files import check_output_path

    if args.out is not None:
        check_output_path(args.out, ".npz", "--out", siblings=(".png",))
    if args.superpose:
        return _superpose(args)
    if args.inverse or args.measurement:
        return _inverse(args)
    if len(args.workdir) > 1:
        raise ValueError(f"several --workdir given ({', '.join(args.workdir)}); sampling several runs together "
                         "needs --superpose or|and")
    for flag in ("weights", "temperature"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag} applies to --superpose only")
    for flag in ("method", "particles"):
        if getattr(args, flag, None) is not None:
            raise ValueError(f"--{flag} applies to an inverse problem (--inverse KIND --measurement FILE.npz)")
    if args.ode:
        raise ValueError("--ode applies to --superpose only (one run's ODE sampler is --sampler ode)")
    from diffjax.run.distill import resolve_student

    args.workdir = resolve_student(args.workdir[0], args.steps)
    run = load_run(args.workdir, args.step, sampling=_sampling_options(args))
    out = args.out or os.path.join(args.workdir, "samples", f"samples_{run.step}.npz")
    if args.out is None:
        check_output_path(out, ".npz", "the run's samples folder (or give --out)", siblings=(".png",))
    x, nfe = generate(run, jax.random.PRNGKey(args.seed), args.num, args.batch)
    png = write_samples(run, x, out)
    print(f"{len(x)} samples ({sampler_name(run.config)}, {nfe} score evaluations each) -> {out}, {png}")
    return 0


def _inverse(args) -> int:
    import jax

    from diffjax.run import load_run, write_samples
    from diffjax.run.build import data_range
    from diffjax.run.files import check_output_path
    from diffjax.run.inverse import output_path, reconstruct

    if not args.inverse or not args.measurement:
        raise ValueError("an inverse problem needs both --inverse KIND and --measurement FILE.npz")
    if len(args.workdir) > 1:
        raise ValueError("an inverse problem takes one --workdir")
    unused = [f"--{f}" for f in ("sampler", "order", "teleport", "predictor", "corrector", "snr", "guidance",
                                 "solver", "nfe", "noise") if getattr(args, f) is not None]
    if unused:
        raise ValueError(f"--inverse runs its method's own sampler (--method, --steps); {', '.join(unused)} do not apply")
    args.method = args.method or "pigdm"
    if args.particles is not None and args.method != "smc":
        raise ValueError(f"--particles applies to --method smc; got --method {args.method}")
    args.particles = args.particles or 64
    out = args.out or output_path(args.measurement, args.method)
    check_output_path(out, ".npz", "--out (the reconstructions)", siblings=(".png",))
    run = load_run(args.workdir[0], args.step)
    x, nfe, kind = reconstruct(run, jax.random.PRNGKey(args.seed), args.measurement, args.method, kind=args.inverse,
                               num_steps=args.steps, particles=args.particles, batch_size=args.batch)
    lo, hi = data_range(run.config)
    png = write_samples(run, lo + (hi - lo) * x, out)
    print(f"{len(x)} reconstructions ({kind}, {args.method}, about {nfe} network passes each) -> {out}, {png}")
    return 0


def _evaluate(args) -> int:
    import jax

    from diffjax.run import evaluate, format_evaluation, load_run

    if args.fp_residual:
        return _fp_residual(args)
    from diffjax.run.distill import resolve_student

    args.workdir = resolve_student(args.workdir, args.steps)
    run = load_run(args.workdir, args.step, sampling=_sampling_options(args))
    ev = evaluate(run, jax.random.PRNGKey(args.seed), args.num or 1000, args.batch, args.inception,
                  progress=not args.no_progress)
    print(format_evaluation(ev))
    return 0


def _fp_residual(args) -> int:
    import jax

    from diffjax.run import load_run
    from diffjax.run.evaluate import evaluate_fp_residual, format_fp_residual
    from diffjax.run.files import OUTPUT_KEY, check_output_path, write_json

    run = load_run(args.workdir, args.step)
    out = os.path.join(args.workdir, "eval", f"fp_residual_{run.step}.json")
    check_output_path(out, ".json", "the run's eval folder")
    ev = evaluate_fp_residual(run, jax.random.PRNGKey(args.seed), "test", args.num or 256)
    print(format_fp_residual(ev))
    if jax.process_index() == 0:
        write_json(out, {**ev, OUTPUT_KEY: run.step})
        print(f"-> {out}")
    return 0


def _fit_solver(args) -> int:
    import jax

    from diffjax.run import load_run
    from diffjax.run.fit import fit_run_solver

    run = load_run(args.workdir, args.step)
    solver, report, out = fit_run_solver(run, jax.random.PRNGKey(args.seed), args.nfe, args.sampler,
                                         paths=args.paths, num_points=args.teacher_points, refine=args.refine,
                                         iters=args.iters, batch_paths=args.batch_paths,
                                         learning_rate=args.learning_rate,
                                         analytic_first=args.analytic_first, out=args.out,
                                         log=print)
    teleport = report.get("validation_error_unipc3_log_snr_teleport")
    print(f"fit-solver: {solver.nfe} score evaluations; held-out mean |x - x_teacher|: fitted {args.sampler} "
          f"{report['validation_error']:.4g} (its training-free start {report['validation_error_init']:.4g}), "
          f"UniPC-3 log-SNR {report['validation_error_unipc3_log_snr']:.4g}"
          + ("" if teleport is None else f", with teleport {teleport:.4g}") + f"; kept {report['chosen']} -> {out}")
    print(f"sample with: diffjax sample --workdir {args.workdir} --solver "
          f"{'fitted --nfe ' + str(solver.nfe) if args.out is None else out}")
    return 0


def _likelihood(args) -> int:
    import jax

    from diffjax.run import evaluate_likelihood, format_likelihood, load_run

    if args.split not in ("test", "train"):
        raise ValueError(f"--split must be test or train; got {args.split!r}")
    run = load_run(args.workdir, args.step)
    ev = evaluate_likelihood(run, jax.random.PRNGKey(args.seed), args.split, args.num, args.batch, args.rtol,
                             args.num_dequantizations)
    print(format_likelihood(ev))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diffjax`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    args, unknown = _parser().parse_known_args([a for a in argv if not a.startswith("--config.")])
    if unknown:
        shown = " ".join(repr(a) if not a.isprintable() or " " in a else a for a in unknown[:5])
        _parser().error(f"unrecognised arguments: {shown[:200]} (config keys are set with --config.KEY=VALUE)")
    if overrides and args.command not in ("train", "distill"):
        _parser().error("--config.KEY=VALUE overrides apply to `diffjax train` and `diffjax distill` only")

    from diffjax.checkpoint import CheckpointError
    from diffjax.run import NonFiniteLossError

    given = [f"--{f.replace('_', '-')}" for f in ("coordinator", "num_processes", "process_id")
             if getattr(args, f, None) is not None]
    if given and not args.distributed:
        _parser().error(f"{', '.join(given)} need --distributed")
    commands = {"train": lambda: _train(args, overrides), "sample": lambda: _sample(args),
                "likelihood": lambda: _likelihood(args), "evaluate": lambda: _evaluate(args),
                "fit-solver": lambda: _fit_solver(args), "distill": lambda: _distill(args, overrides)}
    args.distributed = getattr(args, "distributed", False)  # fit-solver runs on one process
    try:
        if args.distributed:
            from diffjax.parallel import initialize_distributed

            initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                                   peer_timeout=args.peer_timeout)
        return commands[args.command]()
    except NonFiniteLossError as e:
        print(f"diffjax: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, CheckpointError) as e:
        message = " ".join(str(e).split())  # one line, whatever the exception carried
        print(f"diffjax {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:  # a place that turned unwritable (or full) after the checks: say which, in one line
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"diffjax {args.command}: error: {e.strerror or type(e).__name__}{where}", file=sys.stderr)
        return 2
    except Exception as e:
        if args.distributed:
            from diffjax.parallel import PeerWatchdog

            PeerWatchdog.abort(e)  # a failed collective is most often a dead peer: name it, then exit
        raise
    finally:
        if args.distributed:
            from diffjax.parallel import PeerWatchdog

            PeerWatchdog.stop_global()  # done: the other processes may finish without us


if __name__ == "__main__":
    sys.exit(main())
