"""``diffjax distill``: a one- or few-step student of a trained run, itself a run.

A student's config is its teacher's (same process, network and data) with the ``distill`` section
set and the student's own training length and learning rate; it trains through
:func:`diffjax.run.train.train`, so checkpoints (with digests), exact resumption, signals and
multi-host all work as for ``train``. The student starts from the teacher's EMA weights.

- ``consistency``: one run in WORKDIR (consistency distillation with the teacher's Heun step, or with
  ``distill.target = "data"`` consistency training tuned from the teacher, ECT). Sampled with
  ``diffjax sample --workdir WORKDIR --steps N`` (N evaluations).
- ``progressive``: one run per halving in ``WORKDIR/steps_N`` (N = start, start/2, ..., 1), each the
  teacher of the next; ``diffjax sample --workdir WORKDIR --steps N`` samples the N-step student.
  An interrupted distillation resumes where it stopped (finished halvings are kept).
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional, Sequence

import jax
from jax.tree_util import Partial

from diffjax import distill as D
from diffjax import models, samplers
from diffjax.configs import apply_overrides, validate
from diffjax.run import files

__all__ = ["METHODS", "student_config", "build_distill_loss", "teacher_params", "student_sampler",
           "distill", "progressive_round_dir", "resolve_student"]

METHODS = ("consistency", "progressive")
_PLAN = "distill.json"   # a progressive distillation's plan, in its top-level work directory


def student_config(teacher_config, method: str, teacher: str, *, iters: int, lr: Optional[float] = None,
                   overrides: Sequence[str] = ()):
    """The teacher's config turned into a student's: ``distill.method``/``teacher`` set, ``iters``
    training steps (checkpoints every quarter), sampling by the student's own sampler, no
    end-of-training likelihood (a student has no probability flow of its own)."""
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; expected one of {METHODS}")
    c = teacher_config.copy_and_resolve_references()
    if c.distill.method:
        raise ValueError(f"{teacher} is itself a student ({c.distill.method}); distil from a diffusion run")
    c.distill.method = method
    c.distill.teacher = os.path.abspath(teacher)
    t = c.training
    t.n_iters = int(iters)
    t.n_jitted_steps = 1
    t.log_freq = max(1, min(100, iters))
    t.snapshot_freq = max(1, iters // 4)
    if lr is not None:
        c.optim.lr = float(lr)
    c.optim.warmup = 0
    c.sampling.num_steps = 1
    c.sampling.solver = ""
    c.sampling.teleport = "auto" if method == "consistency" else "off"
    c.eval.bpd_num_examples = 0
    apply_overrides(c, overrides)
    validate(c)
    return c


def teacher_params(config):
    """The EMA parameters of ``config.distill.teacher`` (its checkpoint ``teacher_step``), refused when
    the teacher's process or network differs from the student's."""
    from diffjax.run.load import load_run

    d = config.distill
    run = load_run(d.teacher, None if d.teacher_step < 0 else int(d.teacher_step))
    for section in ("sde", "model"):
        a, b = run.config[section].to_dict(), config[section].to_dict()
        a.pop("ema_rate", None), b.pop("ema_rate", None)
        if a != b:
            raise ValueError(f"the teacher {d.teacher} has another {section} than this student ({a} vs {b}); a "
                             "student keeps its teacher's process and network")
    return run.params


def _teacher_denoiser(config, sde, model, params, num_steps_teacher: Optional[int] = None):
    score_model = models.network_score_model(model, sde, sigma_data=float(config.sde.get("sigma_data", 0.5)))
    return D.score_denoiser(sde, Partial(score_model, params))


def build_distill_loss(config, sde, model, teacher) -> Callable:
    """The student's loss (``loss_fn(key, params, batch, step)``) given the teacher's parameters."""
    d = config.distill
    student_model = models.network_score_model(model, sde, train=True, sigma_data=float(config.sde.get("sigma_data", 0.5)))
    student = D.network_denoiser(student_model)
    teacher_fn = _teacher_denoiser(config, sde, model, teacher)
    if d.method == "consistency":
        return D.consistency_loss_fn(sde, student, teacher=teacher_fn if d.target == "teacher" else None,
                                     p_mean=float(d.p_mean), p_std=float(d.p_std), q=float(d.q),
                                     stage_steps=int(d.stage_steps),
                                     huber_c=None if d.huber_c < 0 else float(d.huber_c), rng_kwarg="dropout_key")
    loss = D.progressive_loss_fn(sde, student, teacher_fn, int(d.num_steps), rng_kwarg="dropout_key")
    return lambda key, params, batch, step=0: loss(key, params, batch)


# a consistency student's teleport distance for sampling.teleport = "auto": sigma^ = 3 sqrt(lam_max), 4.7 on
# the digits, where one step of a 600-step student scored digits-FID 0.40 (sigma^ 2.5: 0.41, 10: 0.50,
# 40: 1.13, from T: 2.79)
STUDENT_KAPPA = 3.0


def student_sampler(config, sde, workdir: str = ""):
    """The sampler of a student run: ``sampling.num_steps`` consistency steps (from the Gaussian
    teleport of ``sampling.teleport``: "auto" is kappa = :data:`STUDENT_KAPPA`, a number is kappa,
    "off" starts at T), or the progressive student's own number of DDIM steps."""
    d = config.distill
    teleport = str(config.sampling.get("teleport", "off"))
    if d.method == "consistency":
        fit, t_start = None, None
        if teleport != "off":
            from diffjax.run.build import data_gaussian_fit

            fit = data_gaussian_fit(config, workdir)
            kappa = STUDENT_KAPPA if teleport == "auto" else float(teleport)
            t_start = samplers.teleport_t_skip(sde, fit, kappa)
        ts = D.consistency_timesteps(sde, int(config.sampling.num_steps), t_start=t_start)
        return D.ConsistencySampler(sde, tuple(float(v) for v in ts), fit)
    if teleport != "off":
        raise ValueError(f"a progressive student samples its own {d.num_steps}-step DDIM grid from T; --teleport "
                         f"{teleport} does not apply (use --teleport off)")
    n = int(config.sampling.num_steps)
    if n != int(d.num_steps):
        raise ValueError(f"this progressive student takes {d.num_steps} steps; got --steps {n} (sample the "
                         f"distillation's top-level folder to choose among its students)")
    return D.DDIMStudentSampler(sde, tuple(float(v) for v in D.progressive_timesteps(sde, n)))


def progressive_round_dir(workdir: str, num_steps: int) -> str:
    return os.path.join(workdir, f"steps_{num_steps}")


def resolve_student(workdir: str, steps: Optional[int]) -> str:
    """The run to sample for ``--workdir``: a progressive distillation's top-level folder resolves to
    its ``steps`` student (default: the fewest steps trained); any other folder is itself."""
    plan_path = os.path.join(workdir, _PLAN)
    if not os.path.isfile(plan_path):
        return workdir
    with open(plan_path) as f:
        plan = json.load(f)
    done = [n for n in plan["rounds"] if os.path.isdir(os.path.join(progressive_round_dir(workdir, n), "checkpoints"))]
    if not done:
        raise ValueError(f"{workdir} is a progressive distillation with no student trained yet; run its "
                         "`diffjax distill` command")
    if steps is None:
        return progressive_round_dir(workdir, min(done))
    if steps not in done:
        raise ValueError(f"{workdir} has students of {sorted(done, reverse=True)} steps; got --steps {steps}")
    return progressive_round_dir(workdir, steps)


def distill(teacher: str, workdir: str, method: str, *, iters: int, lr: Optional[float] = None,
            start_steps: int = 32, overrides: Sequence[str] = (), progress: bool = True, restore_intact: bool = False,
            log: Callable[[str], None] = print) -> dict:
    """Distil the run ``teacher`` into ``workdir`` by ``method`` (see the module docstring);
    ``iters`` training steps (per halving for progressive, from ``start_steps`` student steps down to 1).
    Returns {"workdir", "runs": [work directories of the students]}."""
    from diffjax.run.load import restore_state
    from diffjax.run.train import train

    if not workdir:
        raise ValueError("--workdir is empty; give a new directory for the student")
    if os.path.abspath(workdir) == os.path.abspath(teacher):
        raise ValueError("--workdir must differ from --teacher (the student is a new run)")
    teacher_config = restore_state(teacher)[0]
    if method == "consistency":
        config = student_config(teacher_config, method, teacher, iters=iters, lr=lr, overrides=overrides)
        result = train(config, workdir, progress=progress, finish=False, restore_intact=restore_intact, log=log)
        return {"workdir": workdir, "runs": [workdir], "stopped": result.get("stopped")}
    if start_steps < 1 or start_steps & (start_steps - 1):
        raise ValueError(f"--start-steps must be a power of two >= 1; got {start_steps}")
    rounds = []
    n = start_steps
    while n >= 1:
        rounds.append(n)
        n //= 2
    files.claim_workdir(workdir)
    plan_path = os.path.join(workdir, _PLAN)
    plan = {"method": "progressive", "teacher": os.path.abspath(teacher), "rounds": rounds, "iters": iters}
    if os.path.isfile(plan_path):
        with open(plan_path) as f:
            saved = json.load(f)
        if saved != plan:
            raise ValueError(f"{workdir} holds a progressive distillation with another plan ({saved}); use a new "
                             "--workdir")
    elif jax.process_index() == 0:
        files.write_json(plan_path, plan)
    previous, runs = teacher, []
    for n in rounds:
        config = student_config(teacher_config, method, previous, iters=iters, lr=lr,
                                overrides=[*overrides, f"distill.num_steps={n}", f"sampling.num_steps={n}"])
        config.distill.teacher = os.path.abspath(previous)
        sub = progressive_round_dir(workdir, n)
        log(f"progressive distillation: {n}-step student of {previous} in {sub}")
        result = train(config, sub, progress=progress, finish=False, restore_intact=restore_intact, log=log)
        runs.append(sub)
        if result.get("stopped"):
            return {"workdir": workdir, "runs": runs, "stopped": result["stopped"]}
        previous = sub
    return {"workdir": workdir, "runs": runs, "stopped": None}
