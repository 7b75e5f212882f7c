"""One- and few-step students of a diffusion model: consistency distillation and training (ECT's
continuous-time form), progressive distillation, reflow (k-rectified flow) and MeanFlow's flow map.

Every loss here is a plain ``loss_fn(key, params, batch[, step]) -> (loss, metrics)`` for
:func:`diffjax.training.make_train_step`, every student a plain function of its parameters, and every
sampler a compiled loop returning a :class:`~diffjax.results.SampleResult`:

==========================  =================================  ==========================================
method                      loss                               sampler (evaluations = steps)
==========================  =================================  ==========================================
consistency (CD / CT)       :func:`consistency_loss_fn`        :func:`consistency_sample`
progressive distillation    :func:`progressive_loss_fn`        :func:`ddim_student_sample`
reflow                      :func:`reflow_loss_fn`             :func:`euler_sample`
MeanFlow                    :func:`meanflow_loss_fn`           :func:`meanflow_sample`
==========================  =================================  ==========================================

:mod:`diffjax.distill.common` holds the exact Gaussian flow map (:func:`gaussian_flow_map`), the
oracle the tests check every method against. ``diffjax distill`` (:mod:`diffjax.run.distill`) runs
them on a trained run.
"""

from diffjax.distill.common import (Denoiser, default_huber_c, gaussian_denoiser, gaussian_flow_map, heun_pf_step,
                                    lognormal_noise_levels, network_denoiser, pseudo_huber, score_denoiser)
from diffjax.distill.consistency import ConsistencySampler, consistency_loss_fn, consistency_sample, consistency_timesteps, ect_r
from diffjax.distill.meanflow import meanflow_loss_fn, meanflow_sample, meanflow_target
from diffjax.distill.progressive import DDIMStudentSampler, ddim_student_sample, ddim_to, progressive_loss_fn, progressive_timesteps
from diffjax.distill.reflow import euler_sample, reflow_loss_fn, reflow_pairs, straightness

__all__ = [
    "Denoiser", "network_denoiser", "score_denoiser", "pseudo_huber", "default_huber_c", "lognormal_noise_levels",
    "heun_pf_step", "gaussian_flow_map", "gaussian_denoiser",
    "ConsistencySampler", "DDIMStudentSampler",
    "ect_r", "consistency_loss_fn", "consistency_timesteps", "consistency_sample",
    "progressive_timesteps", "ddim_to", "progressive_loss_fn", "ddim_student_sample",
    "reflow_pairs", "reflow_loss_fn", "straightness", "euler_sample",
    "meanflow_target", "meanflow_loss_fn", "meanflow_sample",
]
