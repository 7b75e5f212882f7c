"""Sharded training on 8 fake CPU devices: data parallel == one device, FSDP == data parallel,
n steps per call == n calls, the NaN guard, and checkpoints across device counts."""

from __future__ import annotations

import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import checkpoint, data, parallel
from diffjax.losses import get_dsm_loss_fn
from diffjax.models import MLPScoreNet, init_params, network_score_model
from diffjax.training import create_train_state, make_optimizer, make_train_step

SDE = diffjax.VPSDE()
NET = MLPScoreNet(hidden=(64, 64), embedding_dim=32)
OPT = make_optimizer(1e-3, warmup_steps=0)
STEP = make_train_step(get_dsm_loss_fn(SDE, network_score_model(NET, SDE), reduce_mean=True), OPT, ema_rate=0.9,
                       skip_nonfinite=True)


def _init(key):
    return create_train_state(jax.random.fold_in(key, 1), init_params(NET, key, (2,)), OPT)


def _batches(n, size=64):
    return [np.asarray(data.toy_2d("two_moons", jax.random.PRNGKey(100 + i), size)) for i in range(n)]


def _run_single(batches):
    state = jax.jit(_init)(jax.random.PRNGKey(0))
    step = jax.jit(STEP)
    losses = []
    for b in batches:
        state, m = step(state, jnp.asarray(b))
        losses.append(float(m["loss"]))
    return state, losses


def _run_mesh(batches, fsdp=1, n_steps=1):
    mesh = parallel.make_mesh(fsdp)
    state, shardings = parallel.init_sharded(_init, mesh, jax.random.PRNGKey(0), fsdp=fsdp > 1)
    step = parallel.compile_train_step(STEP, mesh, shardings, n_steps)
    losses = []
    for i in range(0, len(batches), n_steps):
        chunk = batches[i:i + n_steps]
        b = np.stack(chunk) if n_steps > 1 else chunk[0]
        state, m = step(state, parallel.global_batch(b, mesh, leading=int(n_steps > 1)))
        losses.extend(np.atleast_1d(np.asarray(m["loss"])).tolist())
    return state, losses, shardings


def _assert_close(a, b, tol=1e-6):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_data_parallel_equals_single_device():
    assert jax.device_count() == 8
    batches = _batches(4)
    single, loss1 = _run_single(batches)
    dp, loss8, shardings = _run_mesh(batches)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-6)
    _assert_close(dp.params, single.params)
    leaf = jax.tree_util.tree_leaves(dp.params)[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8


def test_fsdp_equals_data_parallel_and_shards_parameters():
    batches = _batches(4)
    dp, loss_dp, _ = _run_mesh(batches)
    fs, loss_fs, shardings = _run_mesh(batches, fsdp=4)
    np.testing.assert_allclose(loss_fs, loss_dp, rtol=1e-6)
    _assert_close(fs.params, dp.params)
    # Each kernel is split 4 ways along its largest dimension (the first of equal ones).
    P = jax.sharding.PartitionSpec
    kernels = {k: v["kernel"] for k, v in fs.params["params"].items()}
    for name, shape, spec, shard in [("Dense_3", (64, 64), P("fsdp", None), (16, 64)),
                                     ("Dense_1", (2, 64), P(None, "fsdp"), (2, 16)),
                                     ("Dense_5", (64, 2), P("fsdp", None), (16, 2))]:
        assert kernels[name].shape == shape and kernels[name].sharding.spec == spec
        assert kernels[name].addressable_shards[0].data.shape == shard


def test_n_steps_per_call_equals_single_steps():
    batches = _batches(4)
    one, loss_one, _ = _run_mesh(batches)
    many, loss_many, _ = _run_mesh(batches, n_steps=2)
    np.testing.assert_allclose(loss_many, loss_one, rtol=1e-6)
    _assert_close(many.params, one.params)
    assert int(many.step) == 4


def test_global_batch_must_divide_over_devices():
    mesh = parallel.make_mesh()
    with pytest.raises(ValueError, match="does not divide over 8 devices"):
        parallel.global_batch(np.zeros((12, 2), np.float32), mesh)
    with pytest.raises(ValueError, match="fsdp must be a positive divisor"):
        parallel.make_mesh(3)


def test_nonfinite_step_is_skipped():
    state = jax.jit(_init)(jax.random.PRNGKey(0))
    bad = jnp.full((64, 2), jnp.nan)
    new, m = jax.jit(STEP)(state, bad)
    assert float(m["skipped"]) == 1.0 and int(new.step) == 1
    _assert_close(new.params, state.params, tol=0)
    _assert_close(new.opt_state, state.opt_state, tol=0)
    good, m = jax.jit(STEP)(new, jnp.asarray(_batches(1)[0]))
    assert float(m["skipped"]) == 0.0 and np.isfinite(float(m["loss"]))


def _tree_hash(directory):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(directory)):
        for f in sorted(files):
            path = os.path.join(root, f)
            h.update(path.encode())
            with open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_checkpoint_round_trip_across_device_counts(tmp_path):
    state, _, shardings = _run_mesh(_batches(2), fsdp=4)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
    config = {"model": {"name": "mlp"}, "training": {"n_iters": 2}}
    ckpt.save(2, state, config, {"epoch": 0, "position": 128})
    for n_devices, fsdp in [(1, 1), (4, 2), (8, 1)]:
        mesh = parallel.make_mesh(fsdp, jax.devices()[:n_devices])
        target = checkpoint.abstract_like(state, parallel.state_shardings(state, mesh, fsdp=fsdp > 1))
        restored, cfg, data_state = ckpt.restore(target)
        assert cfg == config and data_state == {"epoch": 0, "position": 128}
        _assert_close(restored, state, tol=0)
        leaf = jax.tree_util.tree_leaves(restored.params)[0]
        assert len(leaf.sharding.device_set) == n_devices
    # keep the last 2
    ckpt.save(3, state, config, {})
    ckpt.save(4, state, config, {})
    assert ckpt.all_steps() == [3, 4]
    ckpt.close()


def test_corrupt_checkpoint_is_an_error_and_left_alone(tmp_path):
    state = jax.jit(_init)(jax.random.PRNGKey(0))
    directory = str(tmp_path / "ckpt")
    ckpt = checkpoint.Checkpointer(directory)
    ckpt.save(1, state, {}, {})
    # Truncate every data file of the state item.
    for root, _, files in os.walk(os.path.join(directory, "1", "state")):
        for f in files:
            if not f.startswith("_") and not f.endswith(".json"):
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(3)
    before = _tree_hash(directory)
    with pytest.raises(checkpoint.CheckpointError, match="could not restore step 1"):
        checkpoint.Checkpointer(directory).restore(checkpoint.abstract_like(state))
    assert _tree_hash(directory) == before
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.Checkpointer(str(tmp_path / "empty")).restore(checkpoint.abstract_like(state))
