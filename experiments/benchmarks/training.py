"""Training benchmark: steps per second of a config's train step, and the sharded step on 1-8 devices.

    python experiments/benchmarks/training.py [--config digits] [--repeats 20] [--scan 10] [--fsdp]

1. The config's step as ``diffjax train`` runs it (all devices, data parallel): the median time of
   the compiled step on a batch already on the devices, and the rate of the whole loop (the host
   loader, batch assembly and the step) over ``--repeats`` steps.
2. The same global batch on meshes of the first 1, 2, 4 and 8 devices. On a CPU machine the
   devices are fake (``JAX_NUM_CPU_DEVICES=8``, set here before JAX starts) and share the same
   cores, so this measures the cost of partitioning and collectives, not a speed-up.
3. With ``--scan N``: N steps per call with a rolled ``lax.scan`` and with a fully unrolled one
   (compile times printed), against N separate calls.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
if os.environ.get("JAX_PLATFORMS", "cpu") == "cpu" and "xla_force_host_platform_device_count" not in os.environ.get(
        "XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from timing import median_time  # noqa: E402

from diffjax import parallel, training  # noqa: E402
from diffjax import run as runs  # noqa: E402
from diffjax.configs import load_config  # noqa: E402


def setup(config, devices, n_steps=1, unroll=1, fsdp=1):
    sde, model = runs.build_sde(config), runs.build_model(config)
    optimizer = runs.build_optimizer(config)
    step = training.make_train_step(runs.build_loss(config, sde, model), optimizer,
                                    ema_rate=config.model.ema_rate, skip_nonfinite=True)
    init = functools.partial(runs.init_state, model, optimizer, runs.example_shape(config))
    mesh = parallel.make_mesh(fsdp, devices)
    state, shardings = parallel.init_sharded(init, mesh, jax.random.PRNGKey(0), fsdp=fsdp > 1)
    compiled = parallel.compile_train_step(step, mesh, shardings, n_steps, unroll=unroll)
    loader = runs.build_loader(config, "train", config.training.batch_size)
    conditional = bool(getattr(model, "num_classes", 0))

    def next_batch():
        batches = [runs.model_batch(next(loader), conditional) for _ in range(n_steps)]
        b = batches[0] if n_steps == 1 else jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)
        return parallel.global_batch(b, mesh, leading=int(n_steps > 1))

    return state, compiled, next_batch


def time_step(config, devices, repeats, n_steps=1, unroll=1, fsdp=1):
    """(compile seconds, median seconds per step on a placed batch, state after)."""
    state, compiled, next_batch = setup(config, devices, n_steps, unroll, fsdp)
    batch = next_batch()
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    box = {"state": state}

    def call():
        box["state"], m = compiled(box["state"], batch)
        return m

    per_call = median_time(call, repeats)
    return compile_s, per_call / n_steps, box, compiled, next_batch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="digits")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--scan", type=int, default=0, help="also time N steps per call (rolled and unrolled scan)")
    parser.add_argument("--fsdp", action="store_true", help="also time FSDP over all devices")
    args = parser.parse_args()
    config = load_config(args.config)
    devices = jax.devices()
    print(f"backend {jax.default_backend()}, {len(devices)} devices, {os.cpu_count()} host cores; config "
          f"{args.config}: {config.model.name}, global batch {config.training.batch_size}")

    # 1. the step as `diffjax train` runs it
    compile_s, step_s, box, compiled, next_batch = time_step(config, devices, args.repeats)
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        box["state"], m = compiled(box["state"], next_batch())
        jax.device_get(m)  # the loop reads the metrics every call (NaN guard)
    loop_s = (time.perf_counter() - t0) / args.repeats
    print(f"\n{args.config} on all {len(devices)} devices: compile {compile_s:.1f} s; step {step_s * 1e3:.1f} ms "
          f"({1 / step_s:.2f} steps/s, {config.training.batch_size / step_s:.0f} examples/s); with the input "
          f"pipeline {loop_s * 1e3:.1f} ms ({1 / loop_s:.2f} steps/s)")

    # 2. the same global batch on 1, 2, 4, 8 devices
    print("\n| devices | compile (s) | ms/step | steps/s | vs 1 device |\n|---:|---:|---:|---:|---:|")
    base = None
    for k in (1, 2, 4, 8):
        if k > len(devices) or config.training.batch_size % k:
            continue
        c, s, *_ = time_step(config, devices[:k], args.repeats)
        base = base or s
        print(f"| {k} | {c:.1f} | {s * 1e3:.1f} | {1 / s:.2f} | {base / s:.2f}x |")
    if args.fsdp and len(devices) > 1:
        c, s, *_ = time_step(config, devices, args.repeats, fsdp=len(devices))
        print(f"| {len(devices)} (FSDP {len(devices)}) | {c:.1f} | {s * 1e3:.1f} | {1 / s:.2f} | {base / s:.2f}x |")

    # 3. n steps per call
    if args.scan > 1:
        n = args.scan
        one = [d for d in devices[:1]]
        print(f"\n{n} steps per call on 1 device:\n| variant | compile (s) | ms/step |\n|---|---:|---:|")
        c, s, *_ = time_step(config, one, max(3, args.repeats // n))
        print(f"| one step per call | {c:.1f} | {s * 1e3:.1f} |")
        c, s, *_ = time_step(config, one, max(3, args.repeats // n), n_steps=n)
        print(f"| lax.scan, rolled | {c:.1f} | {s * 1e3:.1f} |")
        c, s, *_ = time_step(config, one, max(3, args.repeats // n), n_steps=n, unroll=n)
        print(f"| lax.scan, unrolled | {c:.1f} | {s * 1e3:.1f} |")


if __name__ == "__main__":
    main()
