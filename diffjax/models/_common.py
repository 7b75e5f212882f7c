"""Option checking and input handling shared by the image score networks."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.layers import default_init, get_activation
from diffjax.score import PREDICTIONS

Array = jax.Array

DTYPES = ("float32", "bfloat16", "float16")


def check_choice(owner: str, field: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{owner}: unknown {field} {value!r}; expected one of {choices}")


def as_int_tuple(owner: str, field: str, value: Any, *, allow_empty: bool = True) -> tuple:
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"{owner}: {field} must be a sequence of ints; got {value!r}") from None
    if any(int(v) != v for v in value):
        raise TypeError(f"{owner}: {field} must be a sequence of ints; got {value!r}")
    if not allow_empty and not out:
        raise ValueError(f"{owner}: {field} must not be empty")
    return out


def check_output_options(module: nn.Module) -> None:
    """The declarations score.py reads: ``prediction``, ``scale_by_sigma``, ``continuous``, and the dtypes."""
    owner = type(module).__name__
    check_choice(owner, "prediction", module.prediction, PREDICTIONS)
    if module.scale_by_sigma and module.prediction != "score":
        raise ValueError(f"{owner}: scale_by_sigma applies to prediction='score' only; got {module.prediction!r}")
    for field in ("dtype", "param_dtype"):
        name = jnp.dtype(getattr(module, field)).name
        check_choice(owner, field, name, DTYPES)


def check_unet_options(module: nn.Module, tuple_fields: tuple[str, ...]) -> None:
    """Checks shared by the U-Nets (NCSN++/DDPM++, DDPM); coerces ``tuple_fields`` to int tuples."""
    owner = type(module).__name__
    check_positive(owner, "nf", module.nf)
    check_positive(owner, "num_res_blocks", module.num_res_blocks)
    for field in tuple_fields:
        object.__setattr__(module, field, as_int_tuple(owner, field, getattr(module, field),
                                                       allow_empty=field == "attn_resolutions"))
    if not module.ch_mult or any(m < 1 for m in module.ch_mult):
        raise ValueError(f"{owner}: ch_mult entries must be positive (and at least one); got {module.ch_mult}")
    check_dropout(owner, module.dropout)
    check_num_classes(owner, module.num_classes)


def check_num_classes(owner: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{owner}: num_classes must be an int >= 0; got {value!r}")


def check_positive(owner: str, field: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {field} must be a positive int; got {value!r}")


def check_dropout(owner: str, value: float) -> None:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{owner}: dropout must be in [0, 1); got {value!r}")


def check_inputs(owner: str, x: Array, labels: Array, factor: int) -> None:
    """x (B, H, W, C) with H, W divisible by the total down-sampling ``factor``; labels (B,)."""
    if x.ndim != 4:
        raise ValueError(f"{owner} takes images of shape (batch, height, width, channels); got {x.shape}")
    if x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(
            f"{owner}: image size {x.shape[1]}x{x.shape[2]} is not divisible by the down-sampling "
            f"factor {factor}; use a size divisible by {factor} or fewer resolutions (ch_mult)"
        )
    if jnp.shape(labels) != (x.shape[0],):
        raise ValueError(f"{owner}: labels must have shape ({x.shape[0]},); got {jnp.shape(labels)}")


def condition_embedding(module: nn.Module, emb: Optional[Array], class_labels: Optional[Array], batch: int,
                        act) -> Optional[Array]:
    """The conditioning vector (B, 4 nf) of the U-Nets: Dense-act-Dense of the time embedding ``emb``
    (None when not noise-conditional), plus the class embedding when ``module.num_classes`` > 0."""
    kw = dict(dtype=module.dtype, param_dtype=module.param_dtype)
    width = 4 * module.nf
    temb = None
    if emb is not None:
        temb = nn.Dense(width, kernel_init=default_init(), **kw)(emb)
        temb = nn.Dense(width, kernel_init=default_init(), **kw)(act(temb))
    cemb = class_embedding(type(module).__name__, module.num_classes, class_labels, batch, width, **kw)
    if cemb is None:
        return temb
    return cemb if temb is None else temb + cemb


def class_embedding(owner: str, num_classes: int, class_labels: Optional[Array], batch: int, features: int,
                    dtype: Any, param_dtype: Any) -> Optional[Array]:
    """Embedding (B, features) of class labels in {0, ..., num_classes}; label ``num_classes`` is the
    "no class" token used by classifier-free guidance. None when the network is unconditional."""
    if num_classes == 0:
        if class_labels is not None:
            raise ValueError(f"{owner} was built with num_classes=0 and takes no class_labels")
        return None
    if class_labels is None:
        raise ValueError(
            f"{owner} is class-conditional (num_classes={num_classes}): pass class_labels of shape ({batch},); "
            f"label {num_classes} means 'no class'"
        )
    if jnp.shape(class_labels) != (batch,) or not jnp.issubdtype(jnp.asarray(class_labels).dtype, jnp.integer):
        raise ValueError(f"{owner}: class_labels must be integers of shape ({batch},); got "
                         f"{jnp.asarray(class_labels).dtype} {jnp.shape(class_labels)}")
    return nn.Embed(num_classes + 1, features, dtype=dtype, param_dtype=param_dtype,
                    name="class_embedding")(class_labels)


class UNetParts:
    """What the U-Nets (NCSN++/DDPM++, DDPM) share beyond their options: the total down-sampling
    factor, and the opening of ``__call__`` (the input checks, the activation, the dtype keywords)."""

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def _open(self, x: Array, time_labels: Array) -> tuple[Any, dict]:
        check_inputs(type(self).__name__, x, time_labels, self.downsampling_factor)
        return get_activation(self.nonlinearity), dict(dtype=self.dtype, param_dtype=self.param_dtype)
