"""The ``diffjax`` command: ``train``, ``sample``, ``likelihood`` and ``evaluate``.

    diffjax train                                   # the digits default into ./runs/digits
    diffjax train --config toy2d --workdir runs/toy --config.training.n_iters=2000
    diffjax sample --workdir runs/digits --num 64 --sampler ode --out grid.npz
    diffjax likelihood --workdir runs/digits --split test
    diffjax evaluate --workdir runs/digits --num 1000

This module only reads the command line and calls :mod:`diffjax.run`; configs and their dotted
``--config.KEY=VALUE`` overrides live in :mod:`diffjax.configs`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

__all__ = ["main"]

# sampling flags of `sample` and `evaluate` -> the config key each one sets
SAMPLING_FLAGS = {"sampler": "method", "steps": "n_steps", "grid": "grid", "predictor": "predictor",
                  "corrector": "corrector", "snr": "snr", "guidance": "guidance_weight", "order": "order",
                  "teleport": "teleport"}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``diffjax: error: ... (see diffjax --help)``, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    """argparse type of counts (--num, --steps, --batch): an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", default=None, help="a sampler name (dpmpp_2m, ddim, edm_heun, pc, ode, ...); "
                                                   "default: the config's sampling.method")
    p.add_argument("--steps", type=_positive_int, default=None, help="time steps of a fixed-step sampler")
    p.add_argument("--grid", default=None, help="time grid: uniform, quadratic, log_snr, karras or fitted (to the "
                                                "data's Gaussian, for the sampler and the number of steps)")
    p.add_argument("--order", type=_positive_int, default=None, help="order of unipc (1-3) or dpmpp_3m")
    p.add_argument("--teleport", default=None, help="off, auto or KAPPA: start the sampler at sigma_hat = KAPPA "
                                                    "x the data's largest std, reached by the exact Gaussian flow")
    p.add_argument("--predictor", default=None, help="predictor of the pc sampler")
    p.add_argument("--corrector", default=None, help="corrector of the pc sampler (none: predictor alone)")
    p.add_argument("--snr", type=float, default=None, help="signal-to-noise ratio of the Langevin corrector")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance weight w (class-conditional runs trained with label dropout)")


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
    g.add_argument("--peer-timeout", type=float, default=20.0,
                   help="seconds without a peer's heartbeat before this process stops (default 20)")


def _run_flags(p: argparse.ArgumentParser, num_default, num_help: str) -> None:
    p.add_argument("--workdir", required=True)
    p.add_argument("--num", type=_positive_int, default=num_default, help=num_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=_positive_int, default=None, help="examples per compiled call")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffjax", description="Score-based generative models through SDEs, in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sample,likelihood,evaluate}",
                                parser_class=_Parser)

    p = sub.add_parser("train", help="train a config (default: digits) in a work directory, resuming if possible",
                       epilog="Any config key can be set with --config.SECTION.KEY=VALUE, "
                              "e.g. --config.training.n_iters=2000.")
    p.add_argument("--config", default="digits", help="a config name (see diffjax.configs.names()) or a path to "
                                                      "a config file")
    p.add_argument("--workdir", default=None, help="where checkpoints, logs and samples go (default: ./runs/CONFIG)")
    p.add_argument("--steps", type=_positive_int, default=None, help="train steps (sets training.n_iters)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _distributed_flags(p)

    p = sub.add_parser("sample", help="draw samples from a trained run's EMA parameters")
    _run_flags(p, 64, "number of samples (default 64)")
    _sampling_flags(p)
    p.add_argument("--out", default=None, help="output .npz (default: WORKDIR/samples/samples_STEP.npz); "
                                               "a PNG grid is written beside it")
    _distributed_flags(p)

    p = sub.add_parser("likelihood", help="bits/dim (or NLL for 2-D toys) of a data split under a trained run")
    _run_flags(p, None, "examples (default: the config's eval.bpd_num_examples)")
    p.add_argument("--split", default="test", help="test or train (default test)")
    p.add_argument("--rtol", type=float, default=None, help="ODE tolerance (default: the config's eval.bpd_rtol)")
    p.add_argument("--num-dequantizations", type=_positive_int, default=1,
                   help="importance-weighted dequantisation draws")
    _distributed_flags(p)

    p = sub.add_parser("evaluate", help="sample and print FID, KID and IS (digits features for the digits)")
    _run_flags(p, 1000, "number of samples (default 1000)")
    p.add_argument("--inception", default=None,
                   help="FID InceptionV3 weights (.npz, see diffjax.metrics); needed for datasets other than digits")
    _sampling_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _distributed_flags(p)
    return parser


def _sampling_overrides(args) -> list[str]:
    out = []
    for flag, key in SAMPLING_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            out.append(f"sampling.{key}={value!r}" if isinstance(value, str) else f"sampling.{key}={value}")
    return out


def _train(args, overrides) -> int:
    from diffjax.configs import load_config
    from diffjax.run import train

    if args.steps is not None:
        overrides = [*overrides, f"training.n_iters={args.steps}"]
    config = load_config(args.config, overrides)
    name = os.path.splitext(os.path.basename(args.config))[0]
    workdir = args.workdir or os.path.join("runs", name)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir} is a file; expected a directory (new or of this run)")
    result = train(config, workdir, progress=not args.no_progress)
    if not result.get("stopped"):
        print(f"done: step {result['step']} in {result['workdir']}")
    return 0


def _sample(args) -> int:
    import jax

    from diffjax.run import generate, load_run, write_samples

    if args.out is not None and not args.out.endswith(".npz"):
        raise ValueError(f"--out {args.out}: the output file must end in .npz")
    run = load_run(args.workdir, args.step, _sampling_overrides(args))
    out = args.out or os.path.join(args.workdir, "samples", f"samples_{run.step}.npz")
    x, nfe = generate(run, jax.random.PRNGKey(args.seed), args.num, args.batch)
    png = write_samples(run, x, out)
    print(f"{len(x)} samples ({run.config.sampling.method}, {nfe} score evaluations each) -> {out}, {png}")
    return 0


def _evaluate(args) -> int:
    import jax

    from diffjax.run import evaluate, format_evaluation, load_run

    run = load_run(args.workdir, args.step, _sampling_overrides(args))
    ev = evaluate(run, jax.random.PRNGKey(args.seed), args.num, args.batch, args.inception,
                  progress=not args.no_progress)
    print(format_evaluation(ev))
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
        _parser().error(f"unrecognised arguments: {' '.join(unknown)} (config keys are set with --config.KEY=VALUE)")
    if overrides and args.command != "train":
        _parser().error("--config.KEY=VALUE overrides apply to `diffjax train` only")

    from diffjax.checkpoint import CheckpointError
    from diffjax.run import NonFiniteLossError

    given = [f"--{f.replace('_', '-')}" for f in ("coordinator", "num_processes", "process_id")
             if getattr(args, f, None) is not None]
    if given and not args.distributed:
        _parser().error(f"{', '.join(given)} need --distributed")
    commands = {"train": lambda: _train(args, overrides), "sample": lambda: _sample(args),
                "likelihood": lambda: _likelihood(args), "evaluate": lambda: _evaluate(args)}
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
