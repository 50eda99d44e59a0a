"""Latency histograms: fixed memory, log-spaced buckets. Part of :mod:`plugin_pool.testing.load`."""

from __future__ import annotations

import math

# -- latency -------------------------------------------------------------------------------------------------


class LatencyHistogram:
    """Durations counted in log-spaced buckets from 1 µs to 100 s, 20 per decade (each about 12% wide).

    Fixed memory whatever the number of samples; percentiles are accurate to one bucket (the geometric
    middle of the bucket is reported, clamped to the exact minimum and maximum). ``add`` is not
    thread-safe: give each thread its own histogram and :meth:`merge` them (the driver does).
    """

    MIN_S = 1e-6
    PER_DECADE = 20
    DECADES = 8
    BUCKETS = PER_DECADE * DECADES + 2  # plus one below MIN_S and one above the top

    __slots__ = ("count", "counts", "max_s", "min_s", "total_s")

    def __init__(self) -> None:
        self.counts = [0] * self.BUCKETS
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0
        self.min_s = math.inf

    @classmethod
    def _index(cls, seconds: float) -> int:
        if seconds < cls.MIN_S:
            return 0
        return min(int(math.log10(seconds / cls.MIN_S) * cls.PER_DECADE) + 1, cls.BUCKETS - 1)

    @classmethod
    def _bounds(cls, index: int) -> tuple[float, float]:
        if index == 0:
            return 0.0, cls.MIN_S
        low = cls.MIN_S * 10 ** ((index - 1) / cls.PER_DECADE)
        return low, cls.MIN_S * 10 ** (index / cls.PER_DECADE)

    def add(self, seconds: float) -> None:
        """Count one duration (seconds). O(1); not thread-safe."""
        self.counts[self._index(seconds)] += 1
        self.count += 1
        self.total_s += seconds
        if seconds > self.max_s:
            self.max_s = seconds
        if seconds < self.min_s:
            self.min_s = seconds

    def copy(self) -> LatencyHistogram:
        """An independent copy (a consistent enough view of one being filled by another thread)."""
        other = LatencyHistogram()
        other.counts = list(self.counts)
        other.count, other.total_s, other.max_s, other.min_s = self.count, self.total_s, self.max_s, self.min_s
        return other

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """Add ``other``'s samples to this histogram; return self."""
        for index, value in enumerate(other.counts):
            if value:
                self.counts[index] += value
        self.count += other.count
        self.total_s += other.total_s
        self.max_s = max(self.max_s, other.max_s)
        self.min_s = min(self.min_s, other.min_s)
        return self

    def minus(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """The samples added since ``earlier`` (a copy taken before). Minimum and maximum of the difference
        are estimated from its outermost non-empty buckets."""
        diff = LatencyHistogram()
        diff.counts = [max(0, a - b) for a, b in zip(self.counts, earlier.counts, strict=True)]
        diff.count = sum(diff.counts)
        diff.total_s = max(0.0, self.total_s - earlier.total_s)
        filled = [i for i, value in enumerate(diff.counts) if value]
        if filled:
            diff.min_s = max(self._bounds(filled[0])[0], self.min_s)
            diff.max_s = min(self._bounds(filled[-1])[1], self.max_s)
        return diff

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) in seconds; 0.0 when empty."""
        if self.count == 0:
            return 0.0
        if q >= 100:
            return self.max_s
        rank = max(1, math.ceil(self.count * q / 100))
        seen = 0
        for index, value in enumerate(self.counts):
            seen += value
            if seen >= rank:
                low, high = self._bounds(index)
                middle = math.sqrt(low * high) if low > 0 else high / 2
                return min(max(middle, self.min_s), self.max_s)
        return self.max_s

    @property
    def mean_s(self) -> float:
        """The mean duration in seconds (0.0 when empty)."""
        return self.total_s / self.count if self.count else 0.0


def format_seconds(seconds: float) -> str:
    """``0.0000002`` -> ``200 ns``; ``0.000123`` -> ``123 µs``; ``0.0123`` -> ``12.3 ms``; ``1.5`` -> ``1.50 s``."""
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"
