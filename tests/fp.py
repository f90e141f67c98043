"""Floating-point error bounds for tests that compare two computation orders.

Two float computations of the same real quantity in different orders (batch splits, fused
vs unfused kernels, folded weights, other thread counts or CPUs) agree only up to rounding,
and how far depends on the CPU's kernels. Tests bound the difference by what the arithmetic
allows for *any* order, never by what one machine gave.
"""

from __future__ import annotations

from torch import Tensor

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


def float32_error(live: Tensor, exact: Tensor) -> float:
    """max|live - exact| of a float32 result against the same computation in float64, at
    least the rounding of its own largest value (one ulp can always differ)."""
    exact = exact.double()
    return max(float((live.double() - exact).abs().max()), U32 * float(exact.abs().max()))


def fp16_target_tolerance(live: Tensor, exact: Tensor) -> Tensor:
    """Elementwise bound on |stored - live| for a teacher target kept by the lossless codec.

    stored = fp16(c): c is the cache run's float32 result, on another batch; live is this
    run's float32 result and exact the same forward in float64 (rounded to float32 by the
    code under test: 2 u |exact|). fp16 rounds to nearest: |stored - c| <= U16 |c| + 2^-25
    (half the subnormal step). |c - live| <= e_c + e with e = `float32_error` of this forward;
    the cache's e_c, the same sums blocked for another batch, is allowed 3 e (the batch-4
    vs batch-1 difference measured 0.7 e). The float32 slack thus scales with whatever this
    CPU's kernels give, and is ~10 u of the map's scale, far below the codec's step.
    """
    slack = 4 * float32_error(live, exact) + 2 * U32 * exact.double().abs()
    return U16 * (live.double().abs() + slack) + 2.0**-25 + slack


def mask_target_tolerance(live: Tensor, exact: Tensor) -> float:
    """Bound on |stored - live| for an attention mask stored as round(255 m) / 255: half a
    step (1/510), the float32 decode (2 u), and the float32 slack of `fp16_target_tolerance`."""
    return 1 / 510 + 2 * U32 + 4 * float32_error(live, exact)
