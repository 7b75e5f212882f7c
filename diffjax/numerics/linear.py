"""Small linear systems solved elementwise, for coefficients that differ per example (no batched LAPACK:
on XLA:CPU those kernels can deadlock when several start at once, see :mod:`diffjax.numerics.xla_cpu`)."""

from __future__ import annotations

import jax

Array = jax.Array

__all__ = ["solve_small"]


def solve_small(rows: list[list[Array]], rhs: list[Array]) -> list[Array]:
    """Solve an n x n system (n <= 3) given as ``rows`` (n lists of n arrays) and ``rhs`` (n arrays),
    elementwise over the arrays' shape, by Cramer's rule; returns the n solution arrays."""
    n = len(rhs)
    if n not in (1, 2, 3) or len(rows) != n or any(len(r) != n for r in rows):
        raise ValueError(f"solve_small solves 1x1 to 3x3 systems; got {len(rows)} rows for {n} right-hand sides")
    if n == 1:
        return [rhs[0] / rows[0][0]]
    if n == 2:
        (a, b), (c, d) = rows
        det = a * d - b * c
        return [(rhs[0] * d - b * rhs[1]) / det, (a * rhs[1] - rhs[0] * c) / det]

    def det3(m):
        return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))

    det = det3(rows)
    out = []
    for j in range(3):
        mj = [[rhs[i] if k == j else rows[i][k] for k in range(3)] for i in range(3)]
        out.append(det3(mj) / det)
    return out
