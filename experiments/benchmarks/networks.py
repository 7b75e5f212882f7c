"""Network benchmark: time per example, XLA's FLOP count and the achieved fraction of matmul FLOP/s.

    python experiments/benchmarks/networks.py [--quick] [--batch 64] [--peak-tflops F]

For each network (the small digits configurations and a CIFAR-10-shaped DDPM++ at reduced width) we
compile (a) the forward pass and (b) forward + backward of the DSM loss (the gradient a train step
needs), read the FLOPs XLA reports for each compiled program (``cost_analysis``), and time them
(median of repeats after a warm-up). The practical ceiling is a dense float32 matmul measured in the
same run on the same machine: we report achieved FLOP/s as a fraction of it. On a GPU the same is
repeated with bfloat16 computation, and with ``--peak-tflops`` (e.g. 989 for an H100 SXM's dense
bf16) the model FLOP utilisation (MFU) against the datasheet peak.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from timing import median_time  # noqa: E402

import diffjax  # noqa: E402
from diffjax import models  # noqa: E402
from diffjax.losses import get_dsm_loss_fn  # noqa: E402

NETWORKS = [
    # (label, preset, options, example shape, process)
    ("NCSN++ digits 8x8", "ncsnpp_digits8", {}, (8, 8, 1), "ve"),
    ("DDPM++ digits 8x8", "ddpmpp_digits8", {}, (8, 8, 1), "vp"),
    ("DDPM++ digits 16x16", "ddpmpp_digits16", {}, (16, 16, 1), "vp"),
    ("DDPM++ CIFAR-10 shape, nf=32", "ddpmpp_cifar10_continuous", {"nf": 32}, (32, 32, 3), "vp"),
]


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX returned one dict per device
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def matmul_flops_per_s(n: int, dtype) -> float:
    """FLOP/s of an n x n x n matmul: 2 n^3 FLOPs per call."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    return 2 * n**3 / median_time(lambda: f(a, b), repeats=10)


def bench(label, preset, options, shape, process, batch, dtype, matmul_rate, peak):
    net = models.get_model(preset, dropout=0.0, dtype=dtype, **options)
    sde = diffjax.VESDE() if process == "ve" else diffjax.VPSDE()
    params = models.init_params(net, jax.random.PRNGKey(0), shape)
    n_params = sum(p.size for p in jax.tree_util.tree_leaves(params))
    score_model = models.network_score_model(net, sde)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, *shape))
    t = jnp.linspace(0.05, 0.95, batch)
    loss_fn = get_dsm_loss_fn(sde, score_model, reduce_mean=True)

    fwd = jax.jit(score_model).lower(params, x, t).compile()
    grad = jax.jit(jax.grad(lambda p, k, x: loss_fn(k, p, x)[0])).lower(params, jax.random.PRNGKey(2), x).compile()
    rows = []
    for name, compiled, args in [("fwd", fwd, (params, x, t)), ("fwd+bwd", grad, (params, jax.random.PRNGKey(2), x))]:
        seconds = median_time(lambda: compiled(*args))
        flops = flops_of(compiled)
        rate = flops / seconds
        row = (f"{label:30s} {jnp.dtype(dtype).name:8s} {name:8s} {n_params:>11,d} {1e6 * seconds / batch:10.1f} us "
               f"{flops / batch / 1e6:9.1f} MFLOP {rate / 1e9:8.2f} GFLOP/s {rate / matmul_rate:6.1%}")
        if peak:
            row += f"  MFU {rate / (peak * 1e12):6.2%}"
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the digits networks only, batch 16")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--matmul", type=int, default=2048, help="size n of the reference n x n matmul")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="datasheet bf16 peak, for MFU on GPU/TPU")
    args = parser.parse_args()
    batch = 16 if args.quick else args.batch
    nets = NETWORKS[:2] if args.quick else NETWORKS
    backend = jax.default_backend()
    dtypes = [jnp.float32] + ([jnp.bfloat16] if backend in ("gpu", "tpu") else [])
    print(f"backend {backend}, {jax.device_count()} device(s): {jax.devices()[0].device_kind}; batch {batch}")
    rates = {}
    for dtype in dtypes:
        rates[dtype] = matmul_flops_per_s(args.matmul, dtype)
        print(f"reference {args.matmul}^3 matmul, {jnp.dtype(dtype).name}: {rates[dtype] / 1e9:.1f} GFLOP/s")
    print(f"{'network':30s} {'dtype':8s} {'pass':8s} {'params':>11s} {'per example':>13s} "
          f"{'FLOPs/example':>15s} {'achieved':>16s} {'of matmul':>9s}")
    for dtype in dtypes:
        for spec in nets:
            for row in bench(*spec, batch, dtype, rates[dtype], args.peak_tflops if dtype == jnp.bfloat16 else 0.0):
                print(row, flush=True)


if __name__ == "__main__":
    main()
