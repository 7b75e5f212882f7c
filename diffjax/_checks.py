"""Input checks shared by the whole package: hyper-parameters by their declared types, numbers, and
concrete arrays. Every check raises a one-line TypeError (wrong kind of value) or ValueError (a value
out of range, non-finite); traced values (inside a user's jit) pass unchecked, as nothing concrete
can be said of them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

__all__ = ["is_traced", "check_fields", "check_real", "check_int", "check_finite_input", "describe"]


def is_traced(value: Any) -> bool:
    """True for a value being traced by jit, grad or vmap (its contents are not known yet)."""
    return isinstance(value, jax.core.Tracer)


def describe(value: Any) -> str:
    """A short description of a value for error messages: its repr (cut) and type."""
    text = repr(value)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({type(value).__name__})"


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_real(owner: str, name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False, hi_open: bool = False, allow_inf: bool = False) -> Any:
    """``value`` if it is a real number (or a JAX/numpy scalar array) in the range and finite
    (``allow_inf``: +inf allowed); else a TypeError or ValueError naming ``owner`` and ``name``."""
    if is_traced(value):
        return value
    if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype,
                                                                                              np.number):
        v = float(np.asarray(value))
    elif _is_real(value):
        v = float(value)
    else:
        raise TypeError(f"{owner}: {name} must be a number; got {describe(value)}")
    if math.isnan(v) or (math.isinf(v) and not (allow_inf and v > 0)):
        raise ValueError(f"{owner}: {name} must be finite; got {v}")
    low_bad = lo is not None and (v <= lo if lo_open else v < lo)
    high_bad = hi is not None and (v >= hi if hi_open else v > hi)
    if low_bad or high_bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"
        raise ValueError(f"{owner}: {name} must lie in {span}; got {v:g}")
    return value


def check_int(owner: str, name: str, value: Any, *, lo: int | None = None, hi: int | None = None,
              hint: str = "") -> int:
    """``value`` as an int if it is an integer (not a bool) in [``lo``, ``hi``]; else a one-line error
    (``hint``, e.g. "256 for 8-bit images", is added in brackets)."""
    hint = f" ({hint})" if hint else ""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be an integer{hint}; got {describe(value)}")
    if lo is not None and value < lo:
        raise ValueError(f"{owner}: {name} must be an integer >= {lo}{hint}; got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{owner}: {name} must be an integer <= {hi}{hint}; got {value}")
    return int(value)


def check_finite_input(name: str, x: Any) -> None:
    """Raise a ValueError naming how many examples of a concrete array ``x`` (batch, ...) hold NaN or Inf.
    (Checked on the host: called inside a trace, a device computation would itself be traced.)"""
    if is_traced(x) or x is None or np.ndim(x) == 0:
        return
    if not jax.numpy.issubdtype(jax.numpy.result_type(x), jax.numpy.inexact) or np.size(x) == 0:
        return
    v = np.asarray(x)
    bad = ~np.isfinite(v.reshape(v.shape[0], -1)).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(f"{name} holds NaN or Inf in {int(bad.sum())} of {bad.shape[0]} examples (first: example "
                         f"{first}); expected finite values")


def _kinds(annotation: str) -> set:
    """What an annotation string of a hyper-parameter allows: {"real", "int", "bool", "str", "none", "array"}."""
    text = str(annotation).replace(" ", "")
    kinds = set()
    if "Optional[" in text or "None" in text:
        kinds.add("none")
    parts = text.replace("Optional[", "").replace("]", "").split("|")
    for word, kind in (("float", "real"), ("int", "int"), ("bool", "bool"), ("str", "str"), ("Array", "array")):
        if word in parts:
            kinds.add(kind)
    return kinds


def check_fields(obj: Any) -> None:
    """Check every dataclass field of ``obj`` declared ``float``, ``int``, ``bool`` or ``str`` (optionally
    ``| None`` or ``| Array``) against its declaration: a string where a number belongs, a bool where
    an int belongs, a non-finite number (unless the field's default is inf, or the class lists the field
    in ``_INFINITE_OK``) is a one-line error."""
    owner = type(obj).__name__
    infinite_ok = getattr(type(obj), "_INFINITE_OK", ())
    for f in dataclasses.fields(obj):
        kinds = _kinds(f.type)
        if not kinds - {"none"}:
            continue
        value = getattr(obj, f.name)
        if value is None and "none" in kinds:
            continue
        if "array" in kinds and (is_traced(value) or isinstance(value, (jax.Array, np.ndarray))):
            if not is_traced(value) and np.ndim(value) == 0:
                check_real(owner, f.name, value, allow_inf=_default_is_inf(f) or f.name in infinite_ok)
            continue
        if "real" in kinds:
            if is_traced(value):
                continue
            check_real(owner, f.name, value, allow_inf=_default_is_inf(f) or f.name in infinite_ok)
        elif "int" in kinds:
            check_int(owner, f.name, value)
        elif "bool" in kinds:
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{owner}: {f.name} must be True or False; got {describe(value)}")
        elif "str" in kinds and not isinstance(value, str):
            raise TypeError(f"{owner}: {f.name} must be a string; got {describe(value)}")


def _default_is_inf(field: dataclasses.Field) -> bool:
    return isinstance(field.default, float) and math.isinf(field.default)
