"""Train state, optimiser, EMA and the train step, as pure functions.

The defaults are the original score_sde's: Adam (beta1 0.9, eps 1e-8, no weight decay), learning
rate 2e-4 with a linear warm-up over 5000 steps, gradients clipped to global norm 1, EMA rate 0.9999.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from diffjax._checks import check_int, check_real

Array = jax.Array

# optax.tree.norm replaced optax.global_norm (deprecated) in newer optax releases.
_global_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm

__all__ = [
    "TrainState",
    "warmup_schedule",
    "make_optimizer",
    "create_train_state",
    "ema_update",
    "ema_decay",
    "make_train_step",
]


@flax.struct.dataclass
class TrainState:
    """Everything a run carries from step to step: a pytree with no static fields.

    step: int32 scalar, number of updates applied. params / ema_params: parameter pytrees.
    opt_state: the optax state. key: the PRNG key the next step splits.
    """

    step: Array
    params: Any
    opt_state: Any
    ema_params: Any
    key: Array


def warmup_schedule(learning_rate: float = 2e-4, warmup_steps: int = 5000) -> optax.Schedule:
    """lr(k) = learning_rate * min((k + 1) / warmup_steps, 1) for update k = 0, 1, ...

    (The original scaled by step / warmup, which makes the very first update a no-op.)
    """
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0; got {learning_rate}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0; got {warmup_steps}")
    if warmup_steps == 0:
        return optax.constant_schedule(learning_rate)

    def schedule(count):
        return learning_rate * jnp.minimum((count + 1.0) / warmup_steps, 1.0)

    return schedule


def make_optimizer(
    learning_rate: float = 2e-4,
    warmup_steps: int = 5000,
    grad_clip: float | None = 1.0,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Global-norm clipping (skipped when ``grad_clip`` is None or <= 0) then Adam(W) with warm-up."""
    check_real("make_optimizer", "learning_rate", learning_rate, lo=0.0, lo_open=True)
    check_int("make_optimizer", "warmup_steps", warmup_steps, lo=0)
    check_real("make_optimizer", "beta1", beta1, lo=0.0, hi=1.0, hi_open=True)
    check_real("make_optimizer", "beta2", beta2, lo=0.0, hi=1.0, hi_open=True)
    check_real("make_optimizer", "eps", eps, lo=0.0, lo_open=True)
    check_real("make_optimizer", "weight_decay", weight_decay, lo=0.0)
    if grad_clip is not None:
        check_real("make_optimizer", "grad_clip", grad_clip)
    schedule = warmup_schedule(learning_rate, warmup_steps)
    if weight_decay > 0:
        adam = optax.adamw(schedule, b1=beta1, b2=beta2, eps=eps, weight_decay=weight_decay)
    else:
        adam = optax.adam(schedule, b1=beta1, b2=beta2, eps=eps)
    if grad_clip is None or grad_clip <= 0:
        return adam
    return optax.chain(optax.clip_by_global_norm(grad_clip), adam)


def create_train_state(key: Array, params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state at step 0; the EMA starts as a copy of ``params``."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree_util.tree_map(jnp.copy, params),
        key=key,
    )


def ema_decay(step: Array, rate: float, warmup: bool = False) -> Array:
    """The EMA decay used at update ``step``: ``rate``, or min(rate, (1 + step) / (10 + step)) with warm-up."""
    rate = jnp.asarray(rate, jnp.float32)
    if not warmup:
        return rate
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(rate, (1.0 + step) / (10.0 + step))


def ema_update(ema_params: Any, params: Any, decay: Array) -> Any:
    """ema <- decay * ema + (1 - decay) * params, leafwise."""
    return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def make_train_step(
    loss_fn: Callable[[Array, Any, Any], tuple[Array, dict]],
    optimizer: optax.GradientTransformation,
    *,
    ema_rate: float = 0.9999,
    ema_warmup: bool = False,
    learning_rate_fn: optax.Schedule | None = None,
    skip_nonfinite: bool = False,
    loss_takes_step: bool = False,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """``train_step(state, batch) -> (state, metrics)``: one optimiser update and one EMA update.

    With ``skip_nonfinite`` a step whose loss or gradient norm is NaN/Inf leaves params, optimiser
    state and EMA unchanged (the step counter and key still advance, so the next step draws fresh
    noise) and reports ``metrics["skipped"] = 1``.

    ``loss_fn(key, params, batch) -> (loss, metrics)`` as built by :mod:`diffjax.losses`. The step
    is pure; compile it with ``jax.jit(train_step, donate_argnums=0)``. Metrics: the loss function's,
    ``grad_norm`` (before clipping) and, if ``learning_rate_fn`` is given, ``learning_rate``.
    With ``loss_takes_step`` the loss is called ``loss_fn(key, params, batch, step)`` with the update's
    step counter (a traced int32), for losses with a curriculum (:mod:`diffjax.distill`).
    """
    if not 0.0 <= ema_rate <= 1.0:
        raise ValueError(f"ema_rate must lie in [0, 1]; got {ema_rate}")
    grad_fn = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)

    def train_step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        key, loss_key = jax.random.split(state.key)
        extra = (state.step,) if loss_takes_step else ()
        (_, metrics), grads = grad_fn(loss_key, state.params, batch, *extra)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = ema_update(state.ema_params, params, ema_decay(state.step, ema_rate, ema_warmup))
        metrics = dict(metrics, grad_norm=_global_norm(grads))
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        if skip_nonfinite:
            ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            params, opt_state, ema_params = jax.tree_util.tree_map(
                lambda new, old: jnp.where(ok, new, old),
                (params, opt_state, ema_params), (state.params, state.opt_state, state.ema_params))
            metrics["skipped"] = jnp.where(ok, 0.0, 1.0)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params, key=key)
        return new_state, metrics

    return train_step
