"""The DDPM U-Net (Ho et al., 2020), as in score_sde's port (35,218,947 parameters on CIFAR-10).

Like score_sde's JAX/PyTorch ports, the up path applies attention once per resolution level rather
than after every residual block, so the CIFAR-10 network has two attention blocks fewer than the
original TF code (35.7M).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models import _common
from diffjax.models.layers import (
    AttnBlock,
    Downsample,
    GroupNorm,
    ResnetBlockDDPM,
    Upsample,
    conv3x3,
    get_activation,
    sinusoidal_embedding,
)

Array = jax.Array

__all__ = ["DDPM"]

_GROUPS = 32


class DDPM(_common.UNetParts, nn.Module):
    """DDPM U-Net. x (B, H, W, C), time_labels (B,) -> (B, H, W, C) float32.

    Time is read through a sinusoidal embedding of the label (the DDPM step index, or 999 t).
    GroupNorm uses 32 groups throughout, so every width (nf * ch_mult) must be a multiple of 32.
    Options as :class:`diffjax.models.NCSNpp` where they share a name.
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    nonlinearity: str = "swish"
    centered: bool = True
    num_classes: int = 0
    prediction: str = "eps"
    scale_by_sigma: bool = False
    continuous: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _common.check_unet_options(self, ("ch_mult", "attn_resolutions"))
        get_activation(self.nonlinearity)
        _common.check_output_options(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, time_labels: Array, class_labels: Optional[Array] = None,
                 train: bool = False) -> Array:
        act, kw = self._open(x, time_labels)
        nf, n_levels = self.nf, len(self.ch_mult)

        emb = sinusoidal_embedding(time_labels, nf) if self.conditional else None
        temb = _common.condition_embedding(self, emb, class_labels, x.shape[0], act)

        def block(out_ch=None):
            return ResnetBlockDDPM(out_ch, self.nonlinearity, self.dropout, groups=_GROUPS, **kw)

        def attention():
            return AttnBlock(groups=_GROUPS, **kw)

        h = x.astype(self.dtype)
        if not self.centered:
            h = 2.0 * h - 1.0
        hs = [conv3x3(nf, **kw)(h)]
        for level in range(n_levels):
            for _ in range(self.num_res_blocks):
                h = block(nf * self.ch_mult[level])(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attention()(h)
                hs.append(h)
            if level != n_levels - 1:
                hs.append(Downsample(with_conv=self.resamp_with_conv, **kw)(hs[-1]))

        h = hs[-1]
        h = block()(h, temb, train)
        h = attention()(h)
        h = block()(h, temb, train)

        for level in reversed(range(n_levels)):
            for _ in range(self.num_res_blocks + 1):
                h = block(nf * self.ch_mult[level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
            if h.shape[1] in self.attn_resolutions:
                h = attention()(h)
            if level != 0:
                h = Upsample(with_conv=self.resamp_with_conv, **kw)(h)
        assert not hs

        h = act(GroupNorm(_GROUPS, **kw)(h))
        h = conv3x3(x.shape[-1], init_scale=0.0, **kw)(h)
        return h.astype(jnp.float32)
