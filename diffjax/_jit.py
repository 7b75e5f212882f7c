"""Compile once: arrays are traced, everything else keys the compile cache by value.

Two tools share one rule. A pytree's *array* leaves (``jax.Array``, tracers, numpy arrays) are
data; every other leaf (Python numbers, strings, functions, hyper-parameters) is static, compared
by type and value when it is hashable and by identity otherwise.

- :func:`filter_jit` compiles a function of any pytrees by that rule. The sampler driver,
  ``ode_sample``, the likelihood and inpainting go through it, so a step built anew on every call,
  or a score function holding new parameters of the same shapes and dtypes, hits the cache, while a
  changed hyper-parameter compiles a new program.
- :func:`bind` fixes leading arguments of a function and is itself a pytree whose only leaves are
  the arrays among them, so it passes through ``jax.jit``, ``grad`` and ``vmap`` as data. The score
  combinators of diffjax (guidance, mixture scores) return such values.

A plain closure over arrays hides them from both: it is keyed by identity, and a new closure
compiles a new program. Give a network's parameters as data instead:
``jax.tree_util.Partial(score_model, params)`` (what :func:`diffjax.score.make_score_fn` returns).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np

__all__ = ["filter_jit", "bind", "Bound", "is_array", "partition", "combine"]


def is_array(leaf: Any) -> bool:
    """True for leaves that are traced: JAX arrays (tracers included) and numpy arrays/scalars."""
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


class _Static:
    """A non-array leaf in a compile-cache key: equal by type and value if hashable, else by identity."""

    __slots__ = ("value", "_key")

    def __init__(self, value: Any):
        self.value = value
        try:
            hash(value)
            self._key = (type(value), value)
        except TypeError:
            self._key = (type(value), "id", id(value))

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Static) and self._key == other._key

    def __repr__(self) -> str:
        return f"_Static({self.value!r})"


def _node_types(treedef) -> tuple:
    """The node types of a tree structure, depth first. jax 0.10's PyTreeDef equality ignores the
    class of ``register_dataclass`` nodes (two step classes with the same fields compare equal), so
    the compile-cache key carries the types itself."""
    out, stack = [], [treedef]
    while stack:
        node = stack.pop()
        data = node.node_data()
        if data is not None:
            out.append(data[0])
        stack.extend(node.children())
    return tuple(out)


def partition(tree: Any):
    """(static, arrays): a hashable description of everything but the arrays, and the arrays.

    An array object that occurs more than once (a mixture held by both a score and its divergence
    function) is passed once and each occurrence refers to it by position, so the compiled program
    sees one operand and XLA can share the computations that depend on it."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    arrays, position, statics = [], {}, []
    for leaf in leaves:
        if is_array(leaf):
            if id(leaf) not in position:
                position[id(leaf)] = len(arrays)
                arrays.append(leaf)
            statics.append(position[id(leaf)])
        else:
            statics.append(_Static(leaf))
    return (treedef, _node_types(treedef), tuple(statics)), arrays


def combine(static, arrays):
    treedef, _, statics = static
    return jax.tree_util.tree_unflatten(treedef, [arrays[s] if isinstance(s, int) else s.value for s in statics])


def filter_jit(fun: Callable) -> Callable:
    """``fun`` compiled with ``jax.jit``, its arguments' array leaves traced and the rest static.

    The returned function has ``cache_size()``: the number of programs traced (and so compiled) so far.
    """

    traces = [0]

    @functools.partial(jax.jit, static_argnums=0)
    def compiled(static, arrays):
        traces[0] += 1  # runs once per trace, and jit traces once per new program
        args, kwargs = combine(static, arrays)
        return fun(*args, **kwargs)

    @functools.wraps(fun)
    def call(*args, **kwargs):
        static, arrays = partition((args, kwargs))
        return compiled(static, arrays)

    call.cache_size = lambda: traces[0]
    return call


class Bound:
    """``fn`` with leading arguments bound: ``Bound(fn, *args, **kwargs)(*more) = fn(*args, *more,
    **kwargs)``. A pytree whose leaves are the arrays in ``fn``, ``args`` and ``kwargs``; the rest is
    its static structure (compared by value). Build with :func:`bind`."""

    __slots__ = ("_static", "_arrays", "__weakref__")  # __weakref__: jax.jit(bound) works

    def __init__(self, fn: Callable, *args, **kwargs):
        if not callable(fn):
            raise TypeError(f"bind needs a callable; got {type(fn).__name__}")
        self._static, self._arrays = partition((fn, args, kwargs))

    @classmethod
    def _rebuild(cls, static, arrays) -> "Bound":
        out = object.__new__(cls)
        out._static, out._arrays = static, list(arrays)
        return out

    def __call__(self, *more, **more_kwargs):
        fn, args, kwargs = combine(self._static, self._arrays)
        return fn(*args, *more, **{**kwargs, **more_kwargs})

    def __eq__(self, other) -> bool:
        if not isinstance(other, Bound) or self._static != other._static:
            return False
        return all(a is b for a, b in zip(self._arrays, other._arrays))

    def __hash__(self) -> int:
        return hash((self._static, tuple(id(a) for a in self._arrays)))

    def __repr__(self) -> str:
        fn, args, kwargs = combine(self._static, self._arrays)
        return f"bind({getattr(fn, '__name__', fn)!s}, {len(args)} args, {len(self._arrays)} arrays)"


jax.tree_util.register_pytree_node(Bound, lambda b: (tuple(b._arrays), b._static), Bound._rebuild)


def bind(fn: Callable, *args, **kwargs) -> Bound:
    """``fn`` with ``args`` (and ``kwargs``) bound, as a pytree of their arrays (see :class:`Bound`)."""
    return Bound(fn, *args, **kwargs)
