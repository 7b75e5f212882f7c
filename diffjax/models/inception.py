"""The FID variant of InceptionV3 (the TF 2015-12-05 graph, as ported by pytorch-fid) in Flax: 2048 pooled
features and 1008 logits, and its weights read from pytorch-fid's file (converted on load; never
downloaded, see :mod:`diffjax.metrics`)."""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["InceptionV3", "inception_params_from_torch", "load_inception_params"]


class BasicConv2d(nn.Module):
    """Convolution without bias, batch normalisation with fixed statistics (eps 1e-3), ReLU."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    strides: int = 1
    padding: Any = 0

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features))
        scale = self.param("scale", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        pad = self.padding if isinstance(self.padding, tuple) else (self.padding, self.padding)
        y = jax.lax.conv_general_dilated(x, kernel, (self.strides, self.strides), ((pad[0], pad[0]), (pad[1], pad[1])),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return nn.relu((y - mean) * (scale / jnp.sqrt(var + 1e-3)) + bias)


def _avg_pool_exclude_pad(x):
    """3x3 average pool, stride 1, padding 1, padded positions not counted (count_include_pad=False)."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    count = jax.lax.reduce_window(jnp.ones(x.shape[:3] + (1,), x.dtype), 0.0, jax.lax.add, (1, 3, 3, 1),
                                  (1, 1, 1, 1), pad)
    return total / count


def _max_pool(x, stride, pad=0):
    p = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), p)


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, name="branch1x1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=2, name="branch5x5_2")(BasicConv2d(48, name="branch5x5_1")(x))
        b3 = BasicConv2d(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, name="branch_pool")(_avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv2d(64, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        b1 = BasicConv2d(192, name="branch1x1")(x)
        b7 = BasicConv2d(c, name="branch7x7_1")(x)
        b7 = BasicConv2d(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, name="branch_pool")(_avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(BasicConv2d(192, name="branch3x3_1")(x))
        b7 = BasicConv2d(192, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nn.Module):
    max_pool: bool  # the FID graph's last block pools with max, the one before with an average

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, name="branch1x1")(x)
        b3 = BasicConv2d(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _max_pool(x, 1, 1) if self.max_pool else _avg_pool_exclude_pad(x)
        bp = BasicConv2d(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """The FID InceptionV3: x (B, H, W, 3) in [-1, 1] (H, W >= 75; 299 for the standard metrics) ->
    (pooled features (B, 2048), logits (B, 1008)). Parameter names follow pytorch-fid's module names."""

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < 75:
            raise ValueError(f"InceptionV3 takes (B, H, W, 3) images with H, W >= 75; got {x.shape}")
        x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool(x, 2)
        x = BasicConv2d(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool(x, 2)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(False, name="Mixed_7b")(x)
        x = InceptionE(True, name="Mixed_7c")(x)
        pooled = jnp.mean(x, axis=(1, 2))
        return pooled, nn.Dense(1008, name="fc")(pooled)


_TORCH_LEAVES = {("conv", "weight"): "kernel", ("bn", "weight"): "scale", ("bn", "bias"): "bias",
                 ("bn", "running_mean"): "mean", ("bn", "running_var"): "var"}


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def inception_params_from_torch(state_dict: dict) -> dict:
    """Flax parameters of :class:`InceptionV3` from pytorch-fid's state dict (names -> numpy arrays in
    torch layout): conv weights (O, I, kh, kw) become (kh, kw, I, O), the fc weight is transposed."""
    params: dict = {}
    for name, value in state_dict.items():
        parts = name.split(".")
        value = np.asarray(value)
        if parts[-1] == "num_batches_tracked" or parts[0] == "AuxLogits":
            continue
        if parts[0] == "fc":
            leaf = {"weight": "kernel", "bias": "bias"}[parts[1]]
            params.setdefault("fc", {})[leaf] = value.T if leaf == "kernel" else value
            continue
        if tuple(parts[-2:]) not in _TORCH_LEAVES:
            raise ValueError(f"unexpected InceptionV3 weight {name!r}; is this pytorch-fid's FID Inception?")
        node = params
        for p in parts[:-2]:
            node = node.setdefault(p, {})
        leaf = _TORCH_LEAVES[tuple(parts[-2:])]
        node[leaf] = value.transpose(2, 3, 1, 0) if leaf == "kernel" else value
    return {"params": params}


def load_inception_params(path: str) -> dict:
    """:class:`InceptionV3` variables from an npz written by ``experiments/convert_inception_weights.py``
    (pytorch-fid's state dict); checked against the network's own parameter shapes."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no Inception weights at {path!r}; see diffjax.metrics for where to get and how to "
                                "convert pt_inception-2015-12-05-6726825d.pth")
    with np.load(path) as f:
        variables = inception_params_from_torch({k: f[k] for k in f.files})
    expected = jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3)))
    got_shapes = jax.tree_util.tree_map(np.shape, variables)
    want_shapes = jax.tree_util.tree_map(lambda s: tuple(s.shape), expected)
    if got_shapes != want_shapes:
        flat_got = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(got_shapes,
                                                                                              is_leaf=_is_shape)}
        flat_want = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(want_shapes,
                                                                                               is_leaf=_is_shape)}
        missing = sorted(set(flat_want) - set(flat_got))[:3]
        wrong = sorted(k for k in set(flat_want) & set(flat_got) if flat_want[k] != flat_got[k])[:3]
        raise ValueError(f"{path} does not hold the FID InceptionV3 weights: missing {missing}, wrong shapes {wrong}")
    return jax.tree_util.tree_map(jnp.asarray, variables)
