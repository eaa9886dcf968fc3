"""Float-range-safe building blocks: exact sums, scaled second moments, exact interpolation.

Every finite float is an integer multiple of 2**-1074 (the smallest subnormal), so a sum
that must be exact is kept as an integer in those units; a quantity that can leave the
float range (the sum of squared deviations) is kept as a `Scaled` pair (m, e) = m * 2**e.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from itertools import chain

from shared.analytics.errors import ResultOutOfRange

UNIT_BITS = 1074  # x * 2**1074 is an integer for every finite float x

Scaled = tuple[float, int]  # m * 2**e with 0.5 <= m < 1, or (0.0, 0)
ZERO: Scaled = (0.0, 0)

# Values at or above _BIG stay normal when scaled by 2**-_DOWN_BITS, so that scaling is exact.
_BIG = 2.0**-900
_DOWN_BITS = 64
_DOWN = 2.0**-_DOWN_BITS
# Deviations are scaled so the largest is about 2**_TARGET_BITS: squares of it, times any
# count up to 2**53, stay far below overflow; squares that underflow are then < 2**-1400
# of the largest, far below a rounding error.
_TARGET_BITS = 200
_UNSCALED_BITS = 400  # below this (and above its inverse) deviations need no scaling


def scaled(x: float, shift: int = 0) -> Scaled:
    """x * 2**shift in normal form."""
    if x == 0.0:
        return ZERO
    m, e = math.frexp(x)
    return m, e + shift


def checked_fsum(values: Sequence[float]) -> float | None:
    """The correctly rounded sum, or None when it is (or passes through) beyond the float range.

    Raises ValueError when a value is NaN or infinite.
    """
    try:
        total = math.fsum(values)
    except OverflowError:
        total = math.inf  # an infinite value could hide behind the overflow: check below
    except ValueError:  # inf + -inf
        raise ValueError("values must be finite numbers") from None
    if math.isfinite(total):
        return total
    if not all(map(math.isfinite, values)):
        raise ValueError("values must be finite numbers")
    return None


def _expansion(values: Sequence[float], first: float) -> list[float]:
    """Floats whose exact sum is the exact sum of `values`, `first` being its rounded sum.

    Each round takes the correctly rounded residual, about 53 bits, off the exact sum; a
    sum of floats spans at most some 2200 bits, so this ends after a few rounds.
    """
    parts: list[float] = []
    residual = first
    while residual != 0.0:
        parts.append(residual)
        residual = math.fsum(chain(values, [-p for p in parts]))
    return parts


def _units(parts: Sequence[float], shift: int) -> int:
    """sum(parts) * 2**shift as an exact integer (every part is a multiple of 2**-shift)."""
    total = 0
    for part in parts:
        num, den = part.as_integer_ratio()
        total += num << (shift - (den.bit_length() - 1))
    return total


def to_units(x: float) -> int:
    """x * 2**1074, exactly."""
    return _units([x], UNIT_BITS)


def exact_sum(values: Sequence[float], rounded: float | None) -> int:
    """The exact sum of finite `values` in units of 2**-1074.

    `rounded` is `checked_fsum(values)` (which rejects non-finite values): None when the
    running sum overflows.
    """
    if rounded is not None:
        return _units(_expansion(values, rounded), UNIT_BITS)
    # The running sum passes the float range: sum large values scaled down by 2**-64
    # (exact, they stay normal) apart from small ones, which cannot overflow unscaled.
    big = [x * _DOWN for x in values if abs(x) >= _BIG]
    small = [x for x in values if abs(x) < _BIG]
    big_total = _units(_expansion(big, math.fsum(big)), UNIT_BITS + _DOWN_BITS)
    return big_total + _units(_expansion(small, math.fsum(small)), UNIT_BITS)


def mean_of_units(total: int, n: int) -> float:
    """The correctly rounded mean of n values whose exact sum is `total` units."""
    # int / int is correctly rounded in Python, also into the subnormal range.
    return total / (n << UNIT_BITS)


def mean_of(values: Sequence[float], lo: float, hi: float) -> float:
    """The mean within an ulp, overflow-safe; lo and hi are the extremes of `values`."""
    total = checked_fsum(values)
    if total is None:
        return mean_of_units(exact_sum(values, None), len(values))
    # Two roundings (sum, then division) can step an ulp outside [lo, hi], which the
    # exact mean never is.
    return min(max(total / len(values), lo), hi)


def squared_deviations(values: Sequence[float], mean: float, lo: float, hi: float) -> Scaled:
    """M2 = sum of (x - exact mean)**2, for `mean` within about an ulp of the exact mean.

    Corrected two-pass: subtracting (sum of d)**2 / n removes the effect of `mean`'s own
    error, which matters when the spread is a few ulps of the magnitude (then every d and
    d**2 is exact).
    Deviations are scaled by a power of two so neither they nor their squares overflow
    and the ones that matter do not underflow.
    """
    if lo == hi:
        return ZERO
    n = len(values)
    if max(-lo, hi) < 2.0**1000:
        pre = 1.0
        widest = max(hi - mean, mean - lo)
    else:
        # x - mean can overflow: halve first (exact for all but subnormal values, which
        # are negligible next to a spread this wide, or absent).
        pre = 0.5
        widest = max(hi * pre - mean * pre, mean * pre - lo * pre)
    exponent = math.frexp(widest)[1]
    if pre == 1.0 and -_UNSCALED_BITS < exponent < _UNSCALED_BITS:
        shift = 0
        deviations = [x - mean for x in values]
    else:
        shift = _TARGET_BITS - exponent
        # 2**shift may exceed the float range: apply it as two factors. Scaling up is
        # exact; scaling down rounds only deviations far below the widest.
        first = min(shift, 1000)
        f, g = 2.0**first, 2.0 ** (shift - first)
        mp = mean * pre
        deviations = [(x * pre - mp) * f * g for x in values]
    squares = math.fsum(map(operator.mul, deviations, deviations))
    drift = math.fsum(deviations)
    m2 = max(squares - drift * drift / n, 0.0)
    return scaled(m2, -2 * shift + (2 if pre == 0.5 else 0))


def sample_stdev(m2: Scaled, n: int) -> float | None:
    """sqrt(M2 / (n - 1)); None for one value; ResultOutOfRange past the largest float."""
    if n < 2:
        return None
    m, e = m2
    if m == 0.0:
        return 0.0
    q = m / (n - 1)
    if e % 2:
        q, e = q * 2.0, e - 1
    root, half = math.sqrt(q), e // 2
    try:
        return math.ldexp(root, half)
    except OverflowError:
        raise ResultOutOfRange(
            f"the sample standard deviation is about {_describe(root, half)}, "
            "beyond the largest float (1.8e308)"
        ) from None


def _describe(m: float, e: int) -> str:
    """m * 2**e in decimal scientific notation, for magnitudes no float can hold."""
    log10 = math.log10(m) + e * math.log10(2.0)
    exponent = math.floor(log10)
    return f"{10.0 ** (log10 - exponent):.4g}e{exponent}"


def position(n: int, percent: int) -> tuple[int, int]:
    """Rank (0-based) and interpolation weight in hundredths of percentile `percent`.

    Linear interpolation between closest ranks: h = (n - 1) * percent / 100, exactly.
    """
    h = (n - 1) * percent
    return h // 100, h % 100


def lerp(a: float, b: float, weight: int, denominator: int = 100) -> float:
    """a + (b - a) * weight / denominator, correctly rounded.

    Exact rational arithmetic: the float form overflows when b - a does and loses all
    accuracy when the answer sits near zero between values of opposite sign.
    """
    if weight == 0 or a == b:
        return a
    pa, qa = a.as_integer_ratio()
    pb, qb = b.as_integer_ratio()
    q = max(qa, qb)  # both are powers of two
    num = pa * (q // qa) * (denominator - weight) + pb * (q // qb) * weight
    return num / (q * denominator)
