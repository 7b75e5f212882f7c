"""Inverse problems y = A x + sigma_y z with a score model as the prior, and the exact posterior to
measure them against.

**Operators** are values (pytrees) acting on a batch (batch, *x_shape) -> (batch, *y_shape):
:func:`matrix` (any A (m, d) on flattened examples), :func:`inpainting` (y = mask * x),
:func:`downsampling` (average pooling by a factor: super-resolution), :func:`blurring` (circular
convolution, by FFT) and :func:`colorization` (the channel mean). Each has ``apply``, ``adjoint``,
``pinv`` (the Moore-Penrose pseudo-inverse A^+) and ``solve_aat(v, r2, s2)`` =
(r2 A A^T + s2 I)^{-1} v and ``logdet_aat(r2, s2)``, what the methods below need; :func:`dense`
gives the matrix of any of them (for tests and oracles).

**The oracle** (:func:`mixture_posterior`): for a Gaussian-mixture prior sum_k pi_k N(mu_k, S_k)
and a linear A the posterior is the mixture with S_k' = A S_k A^T + sigma_y^2 I, K_k = S_k A^T S_k'^-1,
m_k = mu_k + K_k (y - A mu_k), C_k = S_k - K_k A S_k and weights proportional to
pi_k N(y; A mu_k, S_k'); its normaliser is the evidence p(y).

**Methods** (each composes with the samplers, like :mod:`diffjax.guidance`):

- :func:`pigdm_score` (PiGDM, Song et al. 2023): the score plus grad log p(y | x_t) under
  x0 | x_t ~ N(D(x_t), r_t^2 I), r_t^2 = sigma^2 / (a^2 + sigma^2):
  (dD/dx_t)^T A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A D), one VJP through the denoiser; a
  posterior score for any step (exact for an N(mu, I) prior).
- :func:`dps` (Chung et al. 2023): any step, then x <- x - zeta grad_x ||y - A D(x)||, with zeta
  = ``scale`` and per-example norms (the code's unsquared norm; the paper's step rule
  zeta' / ||y - A D|| on the squared norm is the same up to the factor 2).
- :func:`ddnm` (Wang et al. 2023): DDIM with the denoised estimate replaced by its range-null
  composition A^+ y + (I - A^+ A) D(x_t) (noiseless y; with sigma_y > 0 it projects onto the noisy y).
- :func:`project` (the seed paper's replacement, for any linear A): after every update the range of
  A is set to the measurement carried to the current time: x <- x + A^+ (a y + sigma A z - A x).
- :func:`red_diff` (Mardani et al. 2024): a point estimate optimised by Adam over the times, the score
  as a regulariser (variational, MAP-like; no backpropagation through the network).
- :func:`twisted_smc` (TDS, Wu et al. 2023): particles moved by Euler-Maruyama of the reverse SDE
  twisted by PiGDM's likelihood, reweighted so that the weights telescope to p(y | x_0), resampled
  when the effective sample size falls below a threshold; asymptotically exact in the particles for
  the model's own discretised chain, with an estimate of the evidence log p(y).
"""


from diffjax.inverse.methods import (
    _red_diff_grad,  # noqa: F401 (tests check the regulariser's gradient)
    ddnm,
    denoiser,
    dps,
    mixture_posterior,
    pigdm_score,
    project,
    red_diff,
)
from diffjax.inverse.operators import (
    Blur,
    Colorize,
    Downsample,
    LinearOperator,
    Mask,
    Matrix,
    blurring,
    colorization,
    dense,
    downsampling,
    inpainting,
    matrix,
)
from diffjax.inverse.smc import SMCResult, twisted_smc

__all__ = ["LinearOperator", "Matrix", "Mask", "Downsample", "Blur", "Colorize", "matrix", "inpainting", "downsampling",
           "blurring", "colorization", "dense", "mixture_posterior",
           "denoiser", "pigdm_score", "dps", "ddnm", "project", "red_diff", "twisted_smc", "SMCResult"]

