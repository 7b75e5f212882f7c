"""The ``diffjax`` command: ``train``, ``sample``, ``likelihood`` and ``evaluate``.

    diffjax train                                   # the digits default into ./runs/digits
    diffjax train --config toy2d --workdir runs/toy --config.training.n_iters=2000
    diffjax sample --workdir runs/digits --num 64 --sampler ode --out grid.npz
    diffjax likelihood --workdir runs/digits --split test
    diffjax evaluate --workdir runs/digits --num 1000

Configs are ml_collections files with ``get_config()``: a name from ``experiments/configs`` (e.g.
``digits``) or a path to such a file. Overrides are dotted ``--config.KEY=VALUE`` arguments; a key
that the config does not have is an error naming it (network options under ``model.options`` are
checked against the network's own options instead).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys
from typing import Sequence

__all__ = ["CONFIG_DIR", "load_config", "apply_overrides", "main"]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "configs")


def _config_path(name_or_path: str) -> str:
    if os.path.isfile(name_or_path):
        return os.path.abspath(name_or_path)
    path = os.path.join(CONFIG_DIR, f"{name_or_path}.py")
    if os.path.isfile(path):
        return path
    names = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f != "default.py") \
        if os.path.isdir(CONFIG_DIR) else []
    raise ValueError(f"unknown config {name_or_path!r}: not a file, and not one of {names} in {CONFIG_DIR}")


def load_config(name_or_path: str = "digits", overrides: Sequence[str] = ()):
    """The config ``name_or_path`` with ``overrides`` (``"--config.a.b=value"`` or ``"a.b=value"``) applied."""
    path = _config_path(name_or_path)
    directory = os.path.dirname(path)
    sys.path.insert(0, directory)  # config files import their siblings (default.py)
    try:
        spec = importlib.util.spec_from_file_location(f"diffjax_config_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # a config file is user code: report what broke, where, in one line
            raise ValueError(f"config file {path} could not be run ({type(e).__name__}: {e})") from e
    finally:
        sys.path.remove(directory)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config()")
    try:
        config = module.get_config()
    except Exception as e:
        raise ValueError(f"get_config() of {path} failed ({type(e).__name__}: {e})") from e
    apply_overrides(config, overrides)
    return config


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as vpsde


def apply_overrides(config, overrides: Sequence[str]) -> None:
    """Set dotted keys in place; unknown keys are a ValueError naming the key and the valid ones."""
    from diffjax.models import NETWORKS, PRESETS, network_options

    for item in overrides:
        text = item[len("--config."):] if item.startswith("--config.") else item
        if "=" not in text:
            raise ValueError(f"override {item!r} must look like --config.section.key=value")
        dotted, raw = text.split("=", 1)
        *parents, leaf = dotted.split(".")
        node = config
        for i, part in enumerate(parents):
            if part not in node:
                raise ValueError(f"unknown config key {'.'.join(parents[:i + 1])!r}; valid keys there: "
                                 f"{', '.join(sorted(node.keys()))}")
            node = node[part]
        value = _parse_value(raw)
        if parents == ["model", "options"]:
            model = config.model.name
            network = PRESETS[model][0] if model in PRESETS else model
            valid = network_options(network) if network in NETWORKS else ()
            if leaf not in valid:
                raise ValueError(f"unknown option {leaf!r} for network {network!r} (config key {dotted!r}); "
                                 f"valid options: {', '.join(valid)}")
            node[leaf] = value
            continue
        if not hasattr(node, "keys") or leaf not in node:
            where = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a section)"
            raise ValueError(f"unknown config key {dotted!r}; valid keys there: {where}")
        current = node[leaf]
        if isinstance(current, bool) and not isinstance(value, bool):
            raise ValueError(f"config key {dotted!r} takes True or False; got {raw!r}")
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # "--config.optim.lr=1" means 1.0
        try:
            node[leaf] = value
        except (TypeError, ValueError) as e:
            raise ValueError(f"config key {dotted!r}: cannot set {raw!r} ({e})") from None


# ----------------------------------------------------------------------------------------------
# The command line


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", default=None, help="a sampler name (dpmpp_2m, ddim, edm_heun, pc, ode, ...); "
                                                   "default: the config's sampling.method")
    p.add_argument("--steps", type=_positive_int, default=None, help="time steps of a fixed-step sampler")
    p.add_argument("--grid", default=None, help="time grid: uniform, quadratic, log_snr or karras")
    p.add_argument("--predictor", default=None, help="predictor of the pc sampler")
    p.add_argument("--corrector", default=None, help="corrector of the pc sampler (none: predictor alone)")
    p.add_argument("--snr", type=float, default=None, help="signal-to-noise ratio of the Langevin corrector")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance weight w (class-conditional runs trained with label dropout)")


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


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffjax", description="Score-based generative models through SDEs, in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sample,likelihood,evaluate}",
                                parser_class=_Parser)

    p = sub.add_parser("train", help="train a config (default: digits) in a work directory, resuming if possible",
                       epilog="Any config key can be set with --config.SECTION.KEY=VALUE, "
                              "e.g. --config.training.n_iters=2000.")
    p.add_argument("--config", default="digits", help="a name in experiments/configs or a path to a config file")
    p.add_argument("--workdir", default=None, help="where checkpoints, logs and samples go (default: ./runs/CONFIG)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host: call jax.distributed.initialize() first (run the same command on every host)")

    p = sub.add_parser("sample", help="draw samples from a trained run's EMA parameters")
    p.add_argument("--workdir", required=True)
    p.add_argument("--num", type=_positive_int, default=64, help="number of samples (default 64)")
    _sampling_flags(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=_positive_int, default=None, help="samples per compiled call")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", default=None, help="output .npz (default: WORKDIR/samples/samples_STEP.npz); "
                                               "a PNG grid is written beside it")

    p = sub.add_parser("likelihood", help="bits/dim (or NLL for 2-D toys) of a data split under a trained run")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default="test", help="test or train (default test)")
    p.add_argument("--num", type=_positive_int, default=None, help="examples (default: the config's eval.bpd_num_examples)")
    p.add_argument("--rtol", type=float, default=None, help="ODE tolerance (default: the config's eval.bpd_rtol)")
    p.add_argument("--num-dequantizations", type=_positive_int, default=1, help="importance-weighted dequantisation draws")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=_positive_int, default=None, help="examples per compiled call")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p = sub.add_parser("evaluate", help="sample and print FID, KID and IS (digits features for the digits)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--num", type=_positive_int, default=1000, help="number of samples (default 1000)")
    p.add_argument("--inception", default=None,
                   help="FID InceptionV3 weights (.npz, see diffjax.metrics); needed for datasets other than digits")
    _sampling_flags(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=_positive_int, default=None, help="samples per compiled call")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _sampling_overrides(args) -> list[str]:
    out = []
    for flag, key in (("sampler", "method"), ("steps", "n_steps"), ("grid", "grid"), ("predictor", "predictor"),
                      ("corrector", "corrector"), ("snr", "snr"), ("guidance", "guidance_weight")):
        value = getattr(args, flag)
        if value is not None:
            out.append(f"sampling.{key}={value!r}" if isinstance(value, str) else f"sampling.{key}={value}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diffjax`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    args, unknown = _parser().parse_known_args([a for a in argv if not a.startswith("--config.")])
    if unknown:
        _parser().error(f"unrecognised arguments: {' '.join(unknown)} (config keys are set with --config.KEY=VALUE)")
    if overrides and args.command != "train":
        _parser().error("--config.KEY=VALUE overrides apply to `diffjax train` only")

    from diffjax import checkpoint, experiment

    try:
        if args.command == "train":
            config = load_config(args.config, overrides)
            if args.distributed:
                from diffjax.parallel import initialize_distributed

                initialize_distributed()
            name = os.path.splitext(os.path.basename(args.config))[0]
            workdir = args.workdir or os.path.join("runs", name)
            if os.path.exists(workdir) and not os.path.isdir(workdir):
                raise ValueError(f"--workdir {workdir} is a file; expected a directory (new or of this run)")
            result = experiment.train(config, workdir, progress=not args.no_progress)
            if result.get("stopped"):
                return 0
            print(f"done: step {result['step']} in {result['workdir']}")
            return 0
        if args.command == "sample":
            if args.out is not None and not args.out.endswith(".npz"):
                raise ValueError(f"--out {args.out}: the output file must end in .npz")
            run = experiment.load_run(args.workdir, args.step, _sampling_overrides(args))
            out = args.out or os.path.join(args.workdir, "samples", f"samples_{run.step}.npz")
            x, nfe = experiment.generate(run, jax_key(args.seed), args.num, args.batch)
            png = experiment.write_samples(run, x, out)
            print(f"{len(x)} samples ({run.config.sampling.method}, {nfe} score evaluations each) -> {out}, {png}")
            return 0
        if args.command == "evaluate":
            run = experiment.load_run(args.workdir, args.step, _sampling_overrides(args))
            ev = experiment.evaluate(run, jax_key(args.seed), args.num, args.batch, args.inception,
                                     progress=not args.no_progress)
            print(experiment.format_evaluation(ev))
            return 0
        if args.command == "likelihood":
            if args.split not in ("test", "train"):
                raise ValueError(f"--split must be test or train; got {args.split!r}")
            run = experiment.load_run(args.workdir, args.step)
            ev = experiment.evaluate_likelihood(run, jax_key(args.seed), args.split, args.num, args.batch, args.rtol,
                                                args.num_dequantizations)
            print(experiment.format_likelihood(ev))
            return 0
    except experiment.NonFiniteLossError as e:
        print(f"diffjax: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, checkpoint.CheckpointError) as e:
        message = " ".join(str(e).split())  # one line, whatever the exception carried
        print(f"diffjax {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 2  # pragma: no cover - argparse requires a command


def jax_key(seed: int):
    import jax

    return jax.random.PRNGKey(seed)


if __name__ == "__main__":
    sys.exit(main())
