"""Floating-point error bounds for tests that compare two computation orders.

Two float computations of the same real quantity in different orders (batch splits, fused
vs unfused kernels, folded weights, other thread counts or CPUs) agree only up to rounding,
and how far depends on the CPU's kernels. Tests bound the difference by what the arithmetic
allows for *any* order, never by what one machine gave.
"""

from __future__ import annotations

U32 = 2.0**-24  # float32 unit roundoff (half an ulp of 1)
U64 = 2.0**-53  # float64 unit roundoff
U16 = 2.0**-11  # float16 unit roundoff: the lossless codec's relative step


def gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n = n u / (1 - n u): a sum of n products, in any order, differs from the
    exact sum by at most gamma_n * sum|terms| (Accuracy and Stability of Numerical
    Algorithms, 2nd ed., 3.1 and 3.5)."""
    if n * u >= 1:
        raise ValueError(f"gamma_{n} is unbounded for u = {u}")
    return n * u / (1 - n * u)
