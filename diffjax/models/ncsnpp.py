"""NCSN++ and DDPM++ (Song et al., ICLR 2021, section 4 and appendix H): one U-Net with the paper's options.

The defaults are NCSN++ cont. for VE on CIFAR-10 (62,758,787 trainable parameters); DDPM++ is the
same class with ``resblock_type="biggan"``, no FIR, no progressive paths and positional embedding
(see :data:`diffjax.models.PRESETS`). The network reads time through ``time_labels`` (batch,):
``embedding_type="fourier"`` embeds log(label) with fixed Gaussian Fourier features (continuous
labels: VE's sigma), ``"positional"`` embeds the label sinusoidally (999 t, or a step index).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models import _common
from diffjax.models.layers import (
    AttnBlock,
    Combine,
    Downsample,
    GaussianFourierProjection,
    GroupNorm,
    ResnetBlockBigGAN,
    ResnetBlockDDPM,
    Upsample,
    conv3x3,
    get_activation,
    sinusoidal_embedding,
)

Array = jax.Array

__all__ = ["NCSNpp"]

RESBLOCK_TYPES = ("biggan", "ddpm")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
COMBINE = ("sum", "cat")
EMBEDDINGS = ("fourier", "positional")


class NCSNpp(_common.UNetParts, nn.Module):
    """NCSN++ / DDPM++ U-Net. x (B, H, W, C), time_labels (B,) -> (B, H, W, C) float32.

    Options (the paper's): ``nf`` base width; ``ch_mult`` width multiplier per resolution (H must be
    divisible by 2^(len(ch_mult) - 1)); ``num_res_blocks`` per resolution; ``attn_resolutions``
    (absolute sizes, e.g. (16,)); ``resblock_type`` "biggan" (resampling inside residual blocks) or
    "ddpm"; ``progressive`` output path "none" / "output_skip" / "residual"; ``progressive_input``
    "none" / "input_skip" / "residual"; ``progressive_combine`` "sum" / "cat"; ``fir`` FIR
    resampling with ``fir_kernel``; ``skip_rescale`` divides residual sums by sqrt(2);
    ``init_scale`` of the last layer of each block (0 means 1e-10); ``conditional`` adds the time
    embedding (noise conditioning); ``num_classes`` > 0 adds a class embedding (label
    ``num_classes`` = no class); ``centered=False`` maps [0, 1] inputs to [-1, 1] first.

    Declarations read by :func:`diffjax.score.score_fn_from_module`: ``prediction`` (the output is a
    score, eps, x0 or v), ``scale_by_sigma`` (divide a score output by sigma(t)), ``continuous``
    (labels are continuous, or discrete step indices). Parameters are created in ``param_dtype``;
    ``dtype`` is the computation dtype (bfloat16 on accelerators).
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    fourier_weights: Optional[tuple] = None
    init_scale: float = 0.0
    nonlinearity: str = "swish"
    centered: bool = True
    num_classes: int = 0
    prediction: str = "score"
    scale_by_sigma: bool = True
    continuous: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        owner = type(self).__name__
        _common.check_unet_options(self, ("ch_mult", "attn_resolutions", "fir_kernel"))
        _common.check_choice(owner, "resblock_type", self.resblock_type, RESBLOCK_TYPES)
        _common.check_choice(owner, "progressive", self.progressive, PROGRESSIVE)
        _common.check_choice(owner, "progressive_input", self.progressive_input, PROGRESSIVE_INPUT)
        _common.check_choice(owner, "progressive_combine", self.progressive_combine, COMBINE)
        _common.check_choice(owner, "embedding_type", self.embedding_type, EMBEDDINGS)
        get_activation(self.nonlinearity)
        if self.embedding_type == "fourier" and not self.continuous:
            raise ValueError(f"{owner}: embedding_type='fourier' reads log(label) and needs continuous labels "
                             "(continuous=True); use 'positional' for discrete step indices")
        _common.check_output_options(self)
        super().__post_init__()

    @property
    def label_domain(self) -> str:
        """"positive" when the time embedding takes log(label) (Fourier), else "any"."""
        return "positive" if self.embedding_type == "fourier" else "any"

    @nn.compact
    def __call__(self, x: Array, time_labels: Array, class_labels: Optional[Array] = None,
                 train: bool = False) -> Array:
        act, kw = self._open(x, time_labels)
        nf, n_levels = self.nf, len(self.ch_mult)
        channels = x.shape[-1]

        # Time (noise-level) embedding, then the optional class embedding added to it.
        if self.embedding_type == "fourier":
            temb = GaussianFourierProjection(nf, self.fourier_scale, weights=self.fourier_weights)(
                jnp.log(time_labels))
        else:
            temb = sinusoidal_embedding(time_labels, nf)
        temb = _common.condition_embedding(self, temb if self.conditional else None, class_labels,
                                           x.shape[0], act)

        if self.resblock_type == "ddpm":
            def block(out_ch=None, up=False, down=False):
                del up, down
                return ResnetBlockDDPM(out_ch, self.nonlinearity, self.dropout, skip_rescale=self.skip_rescale,
                                       init_scale=self.init_scale, **kw)
        else:
            def block(out_ch=None, up=False, down=False):
                return ResnetBlockBigGAN(out_ch, up, down, self.nonlinearity, self.dropout, self.fir,
                                         self.fir_kernel, self.skip_rescale, self.init_scale, **kw)

        def attention():
            return AttnBlock(self.skip_rescale, self.init_scale, **kw)

        fir = dict(fir=self.fir, fir_kernel=self.fir_kernel, **kw)
        x = x.astype(self.dtype)
        if not self.centered:
            x = 2.0 * x - 1.0

        # Down path.
        input_pyramid = x if self.progressive_input != "none" else None
        hs = [conv3x3(nf, **kw)(x)]
        for level in range(n_levels):
            for _ in range(self.num_res_blocks):
                h = block(nf * self.ch_mult[level])(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attention()(h)
                hs.append(h)
            if level == n_levels - 1:
                continue
            if self.resblock_type == "ddpm":
                h = Downsample(with_conv=self.resamp_with_conv, **fir)(hs[-1])
            else:
                h = block(down=True)(hs[-1], temb, train)
            if self.progressive_input == "input_skip":
                input_pyramid = Downsample(with_conv=False, **fir)(input_pyramid)
                h = Combine(self.progressive_combine, **kw)(input_pyramid, h)
            elif self.progressive_input == "residual":
                input_pyramid = Downsample(out_ch=h.shape[-1], with_conv=True, **fir)(input_pyramid)
                input_pyramid = self._skip_sum(input_pyramid, h)
                h = input_pyramid
            hs.append(h)

        h = hs[-1]
        h = block()(h, temb, train)
        h = attention()(h)
        h = block()(h, temb, train)

        # Up path.
        pyramid = None
        for level in reversed(range(n_levels)):
            for _ in range(self.num_res_blocks + 1):
                h = block(nf * self.ch_mult[level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
            if h.shape[1] in self.attn_resolutions:
                h = attention()(h)
            if self.progressive == "output_skip":
                out = conv3x3(channels, init_scale=self.init_scale, **kw)(act(GroupNorm(**kw)(h)))
                pyramid = out if pyramid is None else Upsample(with_conv=False, **fir)(pyramid) + out
            elif self.progressive == "residual":
                if pyramid is None:
                    pyramid = conv3x3(h.shape[-1], **kw)(act(GroupNorm(**kw)(h)))
                else:
                    pyramid = Upsample(out_ch=h.shape[-1], with_conv=True, **fir)(pyramid)
                    pyramid = self._skip_sum(pyramid, h)
                    h = pyramid
            if level != 0:
                if self.resblock_type == "ddpm":
                    h = Upsample(with_conv=self.resamp_with_conv, **fir)(h)
                else:
                    h = block(up=True)(h, temb, train)
        assert not hs

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = conv3x3(channels, init_scale=self.init_scale, **kw)(act(GroupNorm(**kw)(h)))
        return h.astype(jnp.float32)

    def _skip_sum(self, a: Array, b: Array) -> Array:
        return (a + b) / np.sqrt(2.0) if self.skip_rescale else a + b
