"""Controllable generation as transforms of score functions and sampler steps.

Everything here works with every sampler in :mod:`diffjax.samplers`:

- **Inpainting** (Song et al. 2021, App. I.2): :func:`inpaint` wraps any step so that after each
  update the known pixels are replaced by the known data perturbed to the current time,
  x <- m * (a(t) y + sigma(t) z) + (1 - m) * x. :func:`inpaint_sample` runs it and pastes the known
  pixels back at the end, so they equal the input exactly. (The original built the final ``x_mean``
  from the *noisy* x in the unknown region, so its last denoising step did nothing there; here the
  unknown region gets the driver's final Tweedie denoising and only the known region is pasted.)
- **Colourisation** (App. I.3): inpainting in a decoupled colour space z = x M, M orthonormal with
  first column (1, 1, 1)/sqrt(3), where channel 0 is sqrt(3) times the grey image and channels 1, 2
  are sampled. The processes are isotropic, so the score in z is s_x(z M^T) M.
- **Classifier guidance** (App. I.1): s(x, t) + scale * grad_x log p_t(y | x) for a time-dependent
  classifier; :func:`get_classifier_loss_fn` trains one on perturbed data.
- **Classifier-free guidance** (Ho & Salimans 2021): (1 + w) s(x, t, y) - w s(x, t, no class) from one
  network trained with :func:`with_label_dropout`.

Shapes: data and samples are (batch, ...); times (batch,); masks broadcast against the data.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.tree_util import Partial
import numpy as np

from diffjax._checks import check_real, is_traced
from diffjax.losses import split_batch
from diffjax.numerics.arrays import expand_to
from diffjax.numerics.random import fold_keys, normal_like, per_example_keys
from diffjax.processes import SDE
from diffjax.results import SampleResult, raise_if_nonfinite
from diffjax.samplers.base import Step, Wrapper, prior_sample, static_field, step_class
from diffjax.samplers.driver import check_x_init, drive

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

__all__ = [
    "forward_perturb",
    "inpaint",
    "paste_known",
    "inpaint_sample",
    "COLOR_BASIS",
    "decouple_colors",
    "couple_colors",
    "colorize_sample",
    "classifier_log_prob",
    "classifier_guided_score",
    "classifier_free_guided_score",
    "guided_score",
    "with_label_dropout",
    "guidance_interval",
    "autoguided_score",
    "apg_score",
    "cfgpp_ddim",
    "get_classifier_loss_fn",
]

_PERTURB_FOLD = 0x1A7E  # folded into the step's per-example keys for the known-region noise


# ----------------------------------------------------------------------------------------------
# Inpainting


def forward_perturb(sde: SDE, keys: Array, y: Array, t: Array) -> tuple[Array, Array]:
    """(a(t) y + sigma(t) z, a(t) y): the known data y (batch, ...) carried to time t (batch,),
    with z drawn from one key per example (keys of shape (batch,))."""
    a, s = sde.marginal_coeffs(t)
    mean = expand_to(a, y) * y
    return mean + expand_to(s, y) * normal_like(keys, y), mean


def paste_known(x: Array, y: Array, mask: Array) -> Array:
    """mask * y + (1 - mask) * x: the known values (mask = 1) of y, the rest from x."""
    return jnp.where(mask > 0.5, y, x)


def _check_mask(y: Array, mask: Array) -> Array:
    mask = jnp.asarray(mask)
    try:
        shape = jnp.broadcast_shapes(mask.shape, jnp.shape(y))
    except ValueError:
        shape = None
    if shape != jnp.shape(y):
        raise ValueError(f"mask of shape {mask.shape} must broadcast to the data's shape {jnp.shape(y)} "
                         "(1 = known, 0 = to be sampled)")
    if not is_traced(mask):
        values = np.unique(np.asarray(mask, np.float64))
        if not np.all(np.isin(values, (0.0, 1.0))):
            raise ValueError(f"mask must hold 0 (to be sampled) and 1 (known) only; got values {values[:5]}")
    return mask.astype(jnp.result_type(y))


@step_class
class _Inpaint(Wrapper):
    """``step`` with the known region (mask = 1) of ``y`` (batch, ...) re-imposed after every update.

    After the wrapped update (at t_next for a predictor, at t for a corrector) the known pixels of
    x become a(t) y + sigma(t) z; the unknown pixels are the step's own. ``y`` and ``mask`` are
    children of the step's pytree: new known data of the same shape does not recompile the sampler.
    """

    step: Step
    y: Array
    mask: Array

    @property
    def name(self) -> str:
        return f"inpaint({self.step.name})"

    def init(self, x):
        return self.step.init(x)

    def update(self, keys, x, state, t, t_next, score_fn):
        if jnp.shape(x) != jnp.shape(self.y):
            raise ValueError(f"the samples {jnp.shape(x)} and the known data {jnp.shape(self.y)} must have one shape")
        x, state = self.step.update(keys, x, state, t, t_next, score_fn)
        now = t_next if self.step.moves_time else t
        known, _ = forward_perturb(self.sde, fold_keys(keys, _PERTURB_FOLD), self.y, now)
        return paste_known(x, known, self.mask), state


def inpaint(step: Step, y: Array, mask: Array) -> Step:
    """``step`` with the known region (mask = 1) of ``y`` (batch, ...) re-imposed after every update:
    the known pixels of x become a(t) y + sigma(t) z, the unknown ones are the step's own."""
    if not isinstance(step, Step):
        raise TypeError(f"inpaint wraps a diffjax.samplers.Step; got {type(step).__name__}")
    return _Inpaint(step, jnp.asarray(y), _check_mask(y, mask))


def inpaint_sample(step: Step, score_fn: ScoreFn, key: Array, y: Array, mask: Array, timesteps: Array,
                   denoise: bool = True, *, check_finite: bool = True) -> SampleResult:
    """Sample the unknown region (mask = 0) of ``y`` (batch, ...) given its known region (mask = 1).

    x_T is drawn from the prior with the known region set to its perturbation at T; every update of
    ``step`` is followed by the replacement of :func:`inpaint`; the last state is denoised with
    Tweedie's formula (when ``denoise``) and the known pixels are then set to y exactly.
    ``key`` is one key (example i uses fold_in(key, i)) or one per example. Returns a
    :class:`~diffjax.results.SampleResult` (as :func:`~diffjax.samplers.sample`).
    """
    return _inpaint_sample(step, score_fn, key, y, mask, timesteps, denoise, check_finite, "inpaint_sample")


def _known_start(step: Step, keys: Array, y: Array, mask: Array, t0: Array) -> Array:
    """x_T from the prior with the known region set to the known data perturbed to t0."""
    known, _ = forward_perturb(step.sde, fold_keys(keys, _PERTURB_FOLD + 1), y, jnp.full((y.shape[0],), t0))
    return paste_known(prior_sample(step.sde, keys, y.shape, y.dtype), known, mask)


def _inpaint_sample(step, score_fn, key, y, mask, timesteps, denoise, check_finite, where, couple=None):
    """The driver on the inpainting wrapper from a start whose known region is the perturbed data; the
    known values pasted back exactly at the end. ``couple`` maps the result back (colourisation)."""
    check_x_init(y, "y")
    y = jnp.asarray(y)
    mask = _check_mask(y, mask)
    keys = per_example_keys(key, y.shape[0])
    x_init = _known_start(step, keys, y, mask, jnp.asarray(timesteps)[0])
    run = drive(inpaint(step, y, mask), score_fn, keys, x_init, timesteps, denoise=denoise)
    x = paste_known(run.x, y, mask)
    result = SampleResult(x if couple is None else couple(x), run.nfe, run.nonfinite_step)
    raise_if_nonfinite(result, where, check_finite, steps=run.timesteps)
    return result


# ----------------------------------------------------------------------------------------------
# Colourisation


def _color_basis() -> np.ndarray:
    # columns: the grey direction (1, 1, 1)/sqrt(3) and two unit vectors orthogonal to it
    return np.array([[1 / np.sqrt(3), 1 / np.sqrt(2), 1 / np.sqrt(6)],
                     [1 / np.sqrt(3), -1 / np.sqrt(2), 1 / np.sqrt(6)],
                     [1 / np.sqrt(3), 0.0, -2 / np.sqrt(6)]], np.float64)


COLOR_BASIS = _color_basis()
"""M (3, 3), orthonormal: z = x M decouples an RGB pixel into sqrt(3) * grey (z_0) and two colour axes."""


def decouple_colors(x: Array) -> Array:
    """z = x M over the last (channel) axis of x (..., 3)."""
    if jnp.shape(x)[-1] != 3:
        raise ValueError(f"colour images have 3 channels last; got shape {jnp.shape(x)}")
    return x @ jnp.asarray(COLOR_BASIS, jnp.result_type(x))


def couple_colors(z: Array) -> Array:
    """x = z M^T, the inverse of :func:`decouple_colors` (M is orthonormal)."""
    if jnp.shape(z)[-1] != 3:
        raise ValueError(f"decoupled images have 3 channels last; got shape {jnp.shape(z)}")
    return z @ jnp.asarray(COLOR_BASIS.T, jnp.result_type(z))


def colorize_sample(step: Step, score_fn: ScoreFn, key: Array, grey: Array, timesteps: Array,
                    denoise: bool = True, *, check_finite: bool = True) -> SampleResult:
    """Colour images whose grey image (the channel mean) is ``grey``.

    ``grey`` is (batch, H, W, 1), or (batch, H, W, 3) whose channel mean is taken, in the model's
    data range; ``score_fn`` scores RGB images (batch, H, W, 3). Sampling runs in the decoupled
    space with channel 0 known, so the returned images' channel mean equals ``grey`` exactly (up to
    float rounding). Returns a :class:`~diffjax.results.SampleResult` with x of shape (batch, H, W, 3).
    """
    grey = jnp.asarray(grey)
    if grey.ndim != 4 or grey.shape[-1] not in (1, 3):
        raise ValueError(f"grey must be (batch, H, W, 1) or (batch, H, W, 3); got shape {grey.shape}")
    g = jnp.mean(grey, axis=-1, keepdims=True)
    y = decouple_colors(jnp.broadcast_to(g, (*g.shape[:-1], 3)))
    mask = jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0], y.dtype), y.shape)
    return _inpaint_sample(step, _decoupled_score(score_fn), key, y, mask, timesteps, denoise, check_finite,
                           "colorize_sample", couple=couple_colors)


def _in_decoupled_space(rgb_score_fn, z, t):
    return decouple_colors(rgb_score_fn(couple_colors(z), t))


def _decoupled_score(rgb_score_fn):
    """The score in the decoupled colour space z = x M: s_z(z) = s_x(z M^T) M (M orthonormal)."""
    return Partial(_in_decoupled_space, rgb_score_fn)


# ----------------------------------------------------------------------------------------------
# Classifier guidance


def _classifier_log_prob(logits_fn, labels, x, t):
    logits = logits_fn(x, t)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits_fn must return (batch, num_classes) for {labels.shape[0]} labels; got {logits.shape}")
    return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), labels[:, None].astype(jnp.int32), 1)[:, 0]


def classifier_log_prob(logits_fn: Callable[[Array, Array], Array], labels: Array) -> Partial:
    """``log_prob(x, t) -> (batch,)``: log p_t(labels | x) = log_softmax(logits_fn(x, t))[labels],
    for a time-dependent classifier ``logits_fn(x, t) -> (batch, num_classes)`` and labels (batch,).
    A ``Partial``: the labels (and a pytree classifier's parameters) are traced, not compiled in."""
    return Partial(_classifier_log_prob, logits_fn, jnp.asarray(labels))


def _is_zero(w) -> bool:
    """w == 0 for a Python number (static); arrays are traced, so never known to be zero."""
    return isinstance(w, (int, float)) and not isinstance(w, bool) and w == 0


def _weight(w):
    """A guidance weight as the combinators hold it: 0 stays a Python 0 (one score evaluation, its own
    program); any other number becomes an array (a Python number float32, an array keeps its float
    dtype), traced, so a new weight does not recompile."""
    if not is_traced(w) and jnp.ndim(w) == 0:
        check_real("guidance", "weight", w)
    if _is_zero(w):
        return 0.0
    floating = hasattr(w, "dtype") and jnp.issubdtype(w.dtype, jnp.floating)
    return jnp.asarray(w) if floating else jnp.asarray(w, jnp.float32)


def _classifier_guided(score_fn, log_prob_fn, scale, x, t):
    grad = jax.grad(lambda x_: jnp.sum(log_prob_fn(x_, t)))(x)
    return (score_fn(x, t) + scale * grad).astype(x.dtype)


def classifier_guided_score(score_fn: ScoreFn, log_prob_fn: Callable[[Array, Array], Array],
                            scale: float | Array = 1.0) -> Partial:
    """s(x, t) + scale * grad_x log p_t(y | x), with ``log_prob_fn(x, t) -> (batch,)`` (labels closed
    over, see :func:`classifier_log_prob`). With the exact scores and classifier, scale 1 samples
    p(x | y); larger scales sharpen it. A ``Partial`` whose leaves (the scores' and classifier's
    parameters, ``scale`` when an array) are traced: pass ``scale`` as an array to change it, or
    differentiate with respect to it, without recompiling."""
    return Partial(_classifier_guided, score_fn, log_prob_fn, _weight(scale))


def _guided(cond_score_fn, uncond_score_fn, w, x, t):
    if _is_zero(w):
        return cond_score_fn(x, t)
    return ((1.0 + w) * cond_score_fn(x, t) - w * uncond_score_fn(x, t)).astype(x.dtype)


def guided_score(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, w: float | Array) -> Partial:
    """(1 + w) s(x, t | y) - w s(x, t): classifier-free guidance from two score functions.

    w = 0 is conditional sampling (one score evaluation); with exact scores this equals classifier
    guidance at scale 1 + w, since s(x | y) - s(x) = grad_x log p_t(y | x). Any other ``w`` is held
    as an array and traced: a new value never recompiles, and it is differentiable."""
    return Partial(_guided, cond_score_fn, uncond_score_fn, _weight(w))


# ----------------------------------------------------------------------------------------------
# Modern guidance variants: on the same footing (score transforms, or a step), the weight w in the
# (1 + w) s_c - w s_u convention of guided_score (EDM's guidance G = 1 + w)


def _interval(sde, cond_score_fn, uncond_score_fn, w, lo, hi, x, t):
    a, s = sde.marginal_coeffs(t)
    on = (s / a > lo) & (s / a <= hi)
    cond = cond_score_fn(x, t)
    guided = (1.0 + w) * cond - w * uncond_score_fn(x, t)
    return jnp.where(expand_to(on, x), guided, cond).astype(x.dtype)


def guidance_interval(sde: SDE, cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, w: float | Array,
                      sigma_lo: float, sigma_hi: float) -> Partial:
    """Classifier-free guidance on for a band of noise levels only (Kynkaanniemi et al. 2024):
    (1 + w) s_c - w s_u where sigma^ = sigma / a lies in (sigma_lo, sigma_hi], the conditional score
    s_c elsewhere. The paper's ImageNet-512 band, from its 32-step EDM sampler's steps 17-22, is
    sigma^ in (0.28, 1.61] with G = 1 + w = 2 (FID 1.81 -> 1.40). Both scores are evaluated (the band
    is per example)."""
    check_real("guidance_interval", "sigma_lo", sigma_lo, lo=0.0)
    check_real("guidance_interval", "sigma_hi", sigma_hi, lo=0.0)
    if not sigma_hi > sigma_lo:
        raise ValueError(f"guidance_interval needs sigma_lo < sigma_hi; got ({sigma_lo}, {sigma_hi}]")
    return Partial(_interval, sde, cond_score_fn, uncond_score_fn, _weight(w), float(sigma_lo), float(sigma_hi))


def autoguided_score(score_fn: ScoreFn, guide_score_fn: ScoreFn, w: float | Array) -> Partial:
    """Autoguidance (Karras et al. 2024): (1 + w) s(x, t) - w s_guide(x, t), where the guide is a
    smaller or less-trained model of the same task and conditioning (EDM2: w + 1 = 2.05-2.1). It is
    guided_score with the weak model in the unconditional's place: it sharpens towards what the good
    model knows beyond the weak one, without the loss of variety of classifier-free guidance."""
    return guided_score(score_fn, guide_score_fn, w)


def _apg(sde, cond_score_fn, uncond_score_fn, w, eta, r, x, t):
    a, s = sde.marginal_coeffs(t)
    s_c, s_u = cond_score_fn(x, t), uncond_score_fn(x, t)
    d_c = (x + expand_to(s, x) ** 2 * s_c) / expand_to(a, x)
    delta = expand_to(s, x) ** 2 * (s_c - s_u) / expand_to(a, x)           # D_c - D_u
    axes = tuple(range(1, x.ndim))
    norm = jnp.sqrt(jnp.sum(delta ** 2, axis=axes, keepdims=True))
    delta = delta * jnp.minimum(1.0, r / jnp.maximum(norm, 1e-30))
    par = jnp.sum(delta * d_c, axis=axes, keepdims=True) / jnp.maximum(jnp.sum(d_c ** 2, axis=axes, keepdims=True),
                                                                       1e-30) * d_c
    d = d_c + w * (delta - par + eta * par)
    return ((expand_to(a, x) * d - x) / expand_to(s, x) ** 2).astype(x.dtype)


def apg_score(sde: SDE, cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, w: float | Array, *, eta: float = 0.0,
              r: float = float("inf")) -> Partial:
    """Adaptive projected guidance (Sadat et al. 2024) on the denoised predictions: Delta = D_c - D_u,
    clipped to norm ``r`` per example, split into its part parallel to D_c and the rest;
    D = D_c + w (Delta_perp + eta Delta_par), turned back into a score. ``eta`` = 1 with r = inf is
    CFG; eta = 0 (default) drops the parallel part, which over-saturates at large w. The momentum
    term of the reference code (a running average of Delta across steps) is left out: it makes the
    field depend on the step count and the path, which no sampler here can then refine."""
    check_real("apg_score", "eta", eta)
    check_real("apg_score", "r", r, lo=0.0, lo_open=True, allow_inf=True)
    return Partial(_apg, sde, cond_score_fn, uncond_score_fn, _weight(w), float(eta), float(r))


@step_class
class _CFGpp(Step):
    sde: SDE
    lam: float = static_field(0.6)

    name = "cfgpp_ddim"
    stochastic = False  # DDIM with eta = 0: deterministic
    nfe = 2
    denoise_nfe = 2
    num_models = 2

    def update(self, keys, x, state, t, t_next, score_fn):
        cond_fn, uncond_fn = score_fn
        a, s = self.sde.marginal_coeffs(t)
        a_n, s_n = self.sde.marginal_coeffs(t_next)
        eps_c = -expand_to(s, x) * cond_fn(x, t)
        eps_u = -expand_to(s, x) * uncond_fn(x, t)
        eps = eps_u + self.lam * (eps_c - eps_u)
        d = (x - expand_to(s, x) * eps) / expand_to(a, x)
        return (expand_to(a_n, x) * d + expand_to(s_n, x) * eps_u).astype(x.dtype), state

    def denoise(self, x, state, t, score_fn):
        cond_fn, uncond_fn = score_fn
        a, s = self.sde.marginal_coeffs(t)
        eps = -expand_to(s, x) * ((1 - self.lam) * uncond_fn(x, t) + self.lam * cond_fn(x, t))
        return (x - expand_to(s, x) * eps) / expand_to(a, x)


def cfgpp_ddim(sde: SDE, lam: float = 0.6) -> Step:
    """CFG++ (Chung et al. 2025) with DDIM: eps_l = eps_u + lam (eps_c - eps_u), D = (x - sigma eps_l) / a,
    x' = a' D + sigma' eps_u (renoised with the *unconditional* prediction); lam in [0, 1]. A step over
    two models: run it with ``score_fn=(cond_score_fn, uncond_score_fn)`` (two evaluations per
    update). It equals DDIM with classifier-free guidance of the step-dependent weight
    1 + w = lam / (1 - e^{-h}) (h the step in log-SNR), so lam is tuned per number of steps."""
    check_real("cfgpp_ddim", "lam", lam, lo=0.0, hi=1.0)
    return _CFGpp(sde, float(lam))


def _classifier_free(score_model, params, labels, w, null_label, label_key, x, t):
    if _is_zero(w):
        return score_model(params, x, t, **{label_key: labels})
    both = score_model(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                       **{label_key: jnp.concatenate([labels, jnp.full_like(labels, null_label)])})
    cond, uncond = jnp.split(both, 2)
    return ((1.0 + w) * cond - w * uncond).astype(x.dtype)


def classifier_free_guided_score(score_model: Callable[..., Array], params: Any, labels: Array, w: float | Array,
                                 null_label: int, label_key: str = "class_labels") -> Partial:
    """Classifier-free guidance with one conditional network ``score_model(params, x, t, **{label_key: labels})``
    trained with label dropout: the unconditional score is the network at ``null_label`` (for diffjax
    networks, ``num_classes``). The two evaluations run as one batch of 2B. A ``Partial``: params and
    labels are traced; ``w`` as for :func:`guided_score`."""
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers of shape (batch,); got {labels.dtype} {labels.shape}")
    return Partial(_classifier_free, score_model, params, labels, _weight(w), int(null_label), label_key)


def with_label_dropout(loss_fn: Callable, p: float, null_label: int, label_key: str = "class_labels") -> Callable:
    """A loss function whose batch labels are replaced by ``null_label`` with probability ``p`` each,
    so one network learns s(x, t | y) and s(x, t) (classifier-free guidance training)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label dropout probability must lie in [0, 1]; got {p}")

    def dropped_loss(key, params, batch):
        x, cond = split_batch(batch)
        if label_key not in cond:
            raise ValueError(f"label dropout needs the labels in the batch under {label_key!r}; got keys "
                             f"{sorted(cond)}")
        k_drop, key = jax.random.split(key)
        labels = cond[label_key]
        drop = jax.random.bernoulli(k_drop, p, labels.shape)
        cond = {**cond, label_key: jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)}
        return loss_fn(key, params, {"x": x, **cond})

    return dropped_loss


def get_classifier_loss_fn(sde: SDE, logits_model: Callable[..., Array], *, t_min: float | None = None,
                           t_max: float | None = None, label_key: str = "class_labels",
                           rng_kwarg: str | None = None) -> Callable:
    """Cross-entropy of a time-dependent classifier on perturbed data.

    ``logits_model(params, x, t, **kw) -> (batch, num_classes)``. For each example t ~ U(t_min, t_max)
    (defaults the process's t_min and T) and x_t = a(t) x + sigma(t) z. Returns ``loss_fn(key, params, batch) -> (loss,
    {"loss", "accuracy"})`` for :func:`diffjax.training.make_train_step`; the batch is a mapping
    with "x" and ``label_key``.
    """
    t_max = sde.T if t_max is None else t_max
    t_min = sde.t_min if t_min is None else t_min
    if not 0.0 <= t_min < t_max <= sde.T:
        raise ValueError(f"need 0 <= t_min < t_max <= T = {sde.T}; got t_min={t_min}, t_max={t_max}")

    def loss_fn(key, params, batch):
        x, cond = split_batch(batch)
        if label_key not in cond:
            raise ValueError(f"a classifier batch needs labels under {label_key!r}; got keys {sorted(cond)}")
        labels = cond.pop(label_key).astype(jnp.int32)
        k_t, k_z, k_model = jax.random.split(key, 3)
        t = jax.random.uniform(k_t, (x.shape[0],), jnp.float32, t_min, t_max)
        a, s = sde.marginal_coeffs(t)
        x_t = expand_to(a, x) * x + expand_to(s, x) * jax.random.normal(k_z, x.shape, x.dtype)
        if rng_kwarg is not None:
            cond = {**cond, rng_kwarg: k_model}
        logits = logits_model(params, x_t, t, **cond).astype(jnp.float32)
        log_p = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), labels[:, None], 1)[:, 0]
        loss = -jnp.mean(log_p)
        accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
        return loss, {"loss": loss, "accuracy": accuracy}

    return loss_fn
