"""A minimal Prometheus registry (counters, gauges, histograms) and the text exposition format 0.0.4.

Written here rather than depending on prometheus_client: the collector needs a dozen series, and the
format is a page of spec (https://prometheus.io/docs/instrumenting/exposition_formats/).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypeVar

LabelValues = tuple[str, ...]

DEFAULT_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def escape_label_value(v: str) -> str:
    """Escape backslash, double quote and newline as the text format requires."""
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(v: float) -> str:
    """A sample value: integers without a fraction, ``+Inf``/``-Inf``/``NaN`` spelled as Prometheus does."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)

    def _check(self, labels: LabelValues) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {labels}")

    def samples(self) -> Iterable[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(s + "\n" for s in self.samples())


class Counter(_Metric):
    """Monotonic count since the process started (Prometheus handles the reset at a restart)."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"{name}: a counter's name ends in _total")
        super().__init__(name, help_text, labelnames)
        self.values: dict[LabelValues, float] = {}

    def inc(self, labels: LabelValues = (), n: float = 1.0) -> None:
        if n < 0:
            raise ValueError("a counter only goes up")
        self._check(labels)
        self.values[labels] = self.values.get(labels, 0.0) + n

    def get(self, labels: LabelValues = ()) -> float:
        return self.values.get(labels, 0.0)

    def samples(self) -> Iterable[str]:
        for lv, v in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labelnames, lv)} {format_value(v)}"


class Gauge(_Metric):
    """A value that goes up and down; a label set can be removed."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self.values: dict[LabelValues, float] = {}

    def set(self, labels: LabelValues, v: float) -> None:
        self._check(labels)
        self.values[labels] = v

    def remove(self, labels: LabelValues) -> None:
        self.values.pop(labels, None)

    def samples(self) -> Iterable[str]:
        for lv, v in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labelnames, lv)} {format_value(v)}"


class Histogram(_Metric):
    """Cumulative buckets, ``_sum`` and ``_count`` per label set."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS_S) -> None:  # fmt: skip
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets))
        self.counts: dict[LabelValues, list[int]] = {}
        self.sums: dict[LabelValues, float] = {}

    def observe(self, labels: LabelValues, v: float) -> None:
        self._check(labels)
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.buckets) + 1)
            self.sums[labels] = 0.0
        for i, b in enumerate(self.buckets):
            if v <= b:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self.sums[labels] += v

    def samples(self) -> Iterable[str]:
        for lv in sorted(self.counts):
            counts = self.counts[lv]
            acc = 0
            for b, c in zip((*self.buckets, math.inf), counts, strict=True):
                acc += c
                le = 'le="' + format_value(b) + '"'
                yield f"{self.name}_bucket{_labels(self.labelnames, lv, le)} {acc}"
            yield f"{self.name}_sum{_labels(self.labelnames, lv)} {format_value(self.sums[lv])}"
            yield f"{self.name}_count{_labels(self.labelnames, lv)} {acc}"


M = TypeVar("M", bound=_Metric)


class Registry:
    """The metrics of one app, rendered in registration order."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: M) -> M:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"{metric.name}: registered twice")
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        """The whole registry in the text exposition format."""
        return "".join(m.render() for m in self._metrics)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
