"""The run layer: configs turned into trained, sampled and evaluated runs in work directories.

    from diffjax import run
    from diffjax.configs import load_config

    config = load_config("digits", ["--config.training.n_iters=200"])
    result = run.train(config, "runs/digits")        # checkpoints, curves, samples, bits/dim
    trained = run.load_run("runs/digits")            # config, process, network, EMA parameters
    x, nfe = run.generate(trained, jax.random.PRNGKey(0), 64)

One concept a module: :mod:`~diffjax.run.build` (config to objects), :mod:`~diffjax.run.train`
(the loop), :mod:`~diffjax.run.load` (a trained run), :mod:`~diffjax.run.generate` (samples),
:mod:`~diffjax.run.evaluate` (likelihood and image metrics), :mod:`~diffjax.run.logging`
(metrics, progress, curves). The ``diffjax`` command (:mod:`diffjax.cli`) calls these.
"""

from diffjax.run.build import (
    build_loader,
    build_loss,
    build_model,
    build_optimizer,
    build_sampler,
    build_sde,
    data_levels,
    data_range,
    example_shape,
    init_state,
    is_toy,
    model_batch,
)
from diffjax.run.evaluate import (
    evaluate,
    evaluate_fp_residual,
    evaluate_likelihood,
    format_evaluation,
    format_fp_residual,
    format_likelihood,
    gaussian_baseline,
)
from diffjax.run.generate import generate, run_score_fn, superpose, to_unit_range, write_samples
from diffjax.run.load import Run, load_run, restore_state
from diffjax.run.logging import MetricLogger, plot_training_curves, read_metrics
from diffjax.run.train import RESUMABLE_CHANGES, ConfigMismatchError, NonFiniteLossError, config_differences, train

__all__ = [
    "build_loader", "build_loss", "build_model", "build_optimizer", "build_sampler", "build_sde",
    "data_levels", "data_range", "example_shape", "init_state", "is_toy", "model_batch",
    "evaluate", "evaluate_fp_residual", "format_fp_residual", "evaluate_likelihood", "format_evaluation",
    "format_likelihood", "gaussian_baseline",
    "generate", "superpose", "run_score_fn", "to_unit_range", "write_samples", "Run", "load_run", "restore_state",
    "MetricLogger", "plot_training_curves", "read_metrics",
    "RESUMABLE_CHANGES", "ConfigMismatchError", "NonFiniteLossError", "config_differences", "train",
]
