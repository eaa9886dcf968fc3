"""A mergeable quantile sketch with a deterministic relative-error bound and a size cap.

Log-bucketed histogram (DDSketch's mapping) with uniform collapsing (UDDSketch): a
nonzero value x goes to bucket ceil(log_g |x|) of its sign, g = (1 + alpha) / (1 - alpha), and
zeros are counted apart. Every value in bucket i, (g^(i-1), g^i], is within relative
error alpha of the bucket's representative 2g^i / (g + 1). When more than MAX_BUCKETS
buckets are in use, neighbouring pairs are merged (g becomes g**2, the level rises by one),
so the size stays bounded for any input while the bound stays relative everywhere, only
coarser: alpha_level = (g^(2^level) - 1) / (g^(2^level) + 1).

The level after merging depends only on the multiset of values, not on how they were
chunked or in which order the chunks are merged: merging is exactly order-independent.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ALPHA = 0.01
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LOG2_GAMMA = math.log2(GAMMA)
_PER_LOG2 = 1 / LOG2_GAMMA
MAX_BUCKETS = 2048  # both signs together; keeps the serialised state under 64 KiB
MAX_LEVEL = 7  # the whole float range, both signs, fits in MAX_BUCKETS at level 7
# Slack on alpha for evaluating log2 and powers in floating point (a value within about
# 1e-11 bucket widths of a boundary may land in the neighbouring bucket).
ROUNDING_SLACK = 1e-11


def _index0(magnitude: float) -> int:
    """The level-0 bucket of a positive finite magnitude."""
    return math.ceil(math.log2(magnitude) * _PER_LOG2)


def collapse(index: int, levels: int) -> int:
    """The bucket that level-0-relative bucket `index` becomes `levels` levels up."""
    # Bucket j one level up is the union of buckets 2j - 1 and 2j: j = ceil(i / 2).
    return -((-index) >> levels)


INDEX_RANGE0 = (_index0(5e-324), _index0(1.7976931348623157e308))


def index_range(level: int) -> tuple[int, int]:
    """The smallest and largest bucket index a finite float can have at `level`."""
    return collapse(INDEX_RANGE0[0], level), collapse(INDEX_RANGE0[1], level)


def relative_accuracy(level: int) -> float:
    """alpha at `level`: (g_l - 1) / (g_l + 1) = tanh(ln(g_l) / 2) with g_l = g^(2^level)."""
    return math.tanh((2**level) * LOG2_GAMMA * math.log(2.0) / 2)


def _representative(index: int, level: int) -> float:
    """2g_l^index / (g_l + 1): within alpha_l of every magnitude in the bucket.

    Computed in log2 so it neither overflows nor underflows before the final rounding;
    a bucket reaching past the largest float gives inf, which callers clamp.
    """
    width = (2**level) * LOG2_GAMMA  # log2(g_l)
    # log2(2g^i / (g + 1)) = 1 + (i - 1) log2 g - log2(1 + g^-1), without forming g^i.
    exponent = 1 + (index - 1) * width - math.log1p(2.0**-width) / math.log(2.0)
    whole = math.floor(exponent)
    if whole >= 1024:
        return math.inf
    return math.ldexp(2.0 ** (exponent - whole), max(whole, -1100))


@dataclass
class Sketch:
    """Bucket counts at a level; `negative` is keyed by the bucket of |x|."""

    level: int = 0
    zero: int = 0
    positive: Counter[int] = field(default_factory=Counter)
    negative: Counter[int] = field(default_factory=Counter)

    @classmethod
    def of(cls, values: Sequence[float]) -> Sketch:
        index, log2, per = math.ceil, math.log2, _PER_LOG2  # locals: this loop is the cost
        sketch = cls(
            positive=Counter([index(log2(x) * per) for x in values if x > 0]),
            negative=Counter([index(log2(-x) * per) for x in values if x < 0]),
        )
        sketch.zero = len(values) - sketch.positive.total() - sketch.negative.total()
        sketch._fit()
        return sketch

    @property
    def count(self) -> int:
        return self.zero + self.positive.total() + self.negative.total()

    @property
    def buckets(self) -> int:
        return len(self.positive) + len(self.negative)

    def bucket_of(self, x: float) -> tuple[int, int]:
        """(sign, index) of the bucket holding x at this level; (0, 0) for zero."""
        if x == 0:
            return 0, 0
        sign = 1 if x > 0 else -1
        return sign, collapse(_index0(abs(x)), self.level)

    def _raise_to(self, level: int) -> None:
        up = level - self.level
        if up > 0:
            for side in (self.positive, self.negative):
                merged: Counter[int] = Counter()
                for i, c in side.items():
                    merged[collapse(i, up)] += c
                side.clear()
                side.update(merged)
            self.level = level

    def _fit(self) -> None:
        while self.buckets > MAX_BUCKETS:
            self._raise_to(self.level + 1)

    @classmethod
    def merged(cls, sketches: Sequence[Sketch]) -> Sketch:
        out = cls(level=max(s.level for s in sketches))
        for s in sketches:
            for side, into in ((s.positive, out.positive), (s.negative, out.negative)):
                for i, c in side.items():
                    into[collapse(i, out.level - s.level)] += c
            out.zero += s.zero
        out._fit()
        return out

    def order_statistics(self, ranks: Sequence[int]) -> list[float]:
        """Estimates of the values at the given 0-based ranks (ascending order assumed)."""
        walk: list[tuple[float, int]] = [
            (-_representative(i, self.level), self.negative[i])
            for i in sorted(self.negative, reverse=True)
        ]
        walk.append((0.0, self.zero))
        walk += [(_representative(i, self.level), self.positive[i]) for i in sorted(self.positive)]
        out: list[float] = []
        seen, it = 0, iter(walk)
        value, count = next(it)
        for rank in ranks:
            while seen + count <= rank:
                seen += count
                value, count = next(it)
            out.append(value)
        return out

    def state(self) -> dict[str, Any]:
        return {
            "alpha": ALPHA,
            "level": self.level,
            "zero": self.zero,
            "negative": [[i, self.negative[i]] for i in sorted(self.negative)],
            "positive": [[i, self.positive[i]] for i in sorted(self.positive)],
        }
