"""Impairment rules and their schedule: which settings are in force for a viewer at a given time.

Pure: no I/O, no clocks. Times are ms. A viewer's time ``t_ms`` is measured from its join (the
accepted WHEP POST); ``join_offset_ms`` is when it joined, measured from the room's start, so rules
timed relative to the room (``room_at_ms``) can be placed on the viewer's time line.

Semantics (docs/scenario.md): a rule is active on ``[start, start + duration_ms)`` (no end when
``duration_ms`` is None). For each setting, the last active rule in file order that sets it wins;
``freeze`` is on while any active rule freezes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any


def _check_range(name: str, value: float | None, lo: float, hi: float) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ValueError(f"{name}: {value!r} must be a number in {lo}..{hi}")


@dataclass(frozen=True, slots=True)
class BurstLoss:
    """Gilbert-Elliott two-state loss: per packet, good→bad with probability ``p``, bad→good with ``r``."""

    p: float
    """Probability of moving good → bad at a packet (0..1)."""
    r: float
    """Probability of moving bad → good at a packet (0..1); mean burst length is 1/r packets."""
    bad_loss: float = 1.0
    """Probability a packet is lost in the bad state (Elliott's 1-h; 1.0 for the Gilbert model)."""
    good_loss: float = 0.0
    """Probability a packet is lost in the good state (Elliott's 1-k)."""

    def __post_init__(self) -> None:
        _check_range("burst.p", self.p, 0.0, 1.0)
        _check_range("burst.r", self.r, 0.0, 1.0)
        _check_range("burst.bad_loss", self.bad_loss, 0.0, 1.0)
        _check_range("burst.good_loss", self.good_loss, 0.0, 1.0)
        if self.r == 0 and self.p > 0:
            raise ValueError("burst.r: must be > 0 (with r = 0 the channel never leaves the bad state)")

    @classmethod
    def from_mean(cls, loss_pct: float, mean_burst_packets: float) -> BurstLoss:
        """The Gilbert model with stationary loss ``loss_pct`` % and mean burst length, packets."""
        _check_range("burst.loss_pct", loss_pct, 0.0, 99.0)
        _check_range("burst.mean_burst_packets", mean_burst_packets, 1.0, 10_000.0)
        r = 1.0 / mean_burst_packets
        loss = loss_pct / 100.0
        return cls(p=min(1.0, r * loss / (1.0 - loss)), r=r)

    @property
    def stationary_loss(self) -> float:
        """Long-run fraction of packets lost (0..1)."""
        if self.p + self.r == 0:
            return self.good_loss
        bad = self.p / (self.p + self.r)
        return bad * self.bad_loss + (1 - bad) * self.good_loss

    def to_dict(self) -> dict[str, Any]:
        return {"p": self.p, "r": self.r, "bad_loss": self.bad_loss, "good_loss": self.good_loss}


@dataclass(frozen=True, slots=True)
class Settings:
    """The impairments in force for one viewer at one moment."""

    loss_pct: float = 0.0
    """Independent random loss, % of RTP packets (media, RTX and audio)."""
    burst: BurstLoss | None = None
    """Burst loss model, or None."""
    delay_ms: float = 0.0
    """Added one-way delay, ms."""
    jitter_ms: float = 0.0
    """Extra delay drawn uniformly from [0, jitter_ms] per packet, ms (order kept)."""
    cap_kbps: float | None = None
    """Bandwidth cap, kbit/s (token bucket), or None for no cap."""
    queue_ms: float = 200.0
    """Bound of the cap's queue, ms of waiting at ``cap_kbps``; packets that would wait longer are dropped."""
    burst_bytes: int = 3000
    """Token bucket depth, bytes (what may leave back-to-back at line rate)."""
    rendition: str | None = None
    """Rendition the viewer should be on; None = the room's default (first) rendition."""
    freeze: bool = False
    """True while video is frozen (no video frames sent)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss_pct": self.loss_pct,
            "burst": self.burst.to_dict() if self.burst else None,
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "cap_kbps": self.cap_kbps,
            "queue_ms": self.queue_ms,
            "burst_bytes": self.burst_bytes,
            "rendition": self.rendition,
            "freeze": self.freeze,
        }


# the fields a rule may set, in Settings (the scenario file accepts exactly these as rule keys)
SETTING_FIELDS = (
    "loss_pct",
    "burst",
    "delay_ms",
    "jitter_ms",
    "cap_kbps",
    "queue_ms",
    "burst_bytes",
    "rendition",
)


def labels_match(match: Mapping[str, tuple[str, ...]], labels: Mapping[str, str]) -> bool:
    """True if every key of ``match`` is in ``labels`` with one of the listed values."""
    return all(labels.get(k) in values for k, values in match.items())


@dataclass(frozen=True, slots=True)
class Rule:
    """One scheduled impairment for the viewers whose labels match."""

    match: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Label → accepted values; every key must match. Empty: every viewer."""
    at_ms: float | None = None
    """Start, ms after the viewer's join (0 when neither this nor ``room_at_ms`` is given)."""
    room_at_ms: float | None = None
    """Start, ms after the room started (instead of ``at_ms``)."""
    duration_ms: float | None = None
    """How long the rule stays active, ms; None: until the viewer leaves."""
    loss_pct: float | None = None
    burst: BurstLoss | None = None
    delay_ms: float | None = None
    jitter_ms: float | None = None
    cap_kbps: float | None = None
    queue_ms: float | None = None
    burst_bytes: int | None = None
    rendition: str | None = None
    freeze: bool = False
    """Freeze video while active (the scenario's ``freeze_ms`` sets this and ``duration_ms``)."""
    repeat: bool = False
    """Content freeze while active: the room's pattern repeats one picture (and marker) while frames keep
    flowing (the scenario's ``repeat_ms`` sets this and ``duration_ms``). Room-wide: ``room_at_ms`` only."""

    def __post_init__(self) -> None:
        if self.at_ms is not None and self.room_at_ms is not None:
            raise ValueError("at_ms: give at_ms (from the viewer's join) or room_at_ms (from room start), not both")
        _check_range("at_ms", self.at_ms, 0, 1e9)
        _check_range("room_at_ms", self.room_at_ms, 0, 1e9)
        _check_range("duration_ms", self.duration_ms, 0, 1e9)
        _check_range("loss_pct", self.loss_pct, 0, 100)
        _check_range("delay_ms", self.delay_ms, 0, 60_000)
        _check_range("jitter_ms", self.jitter_ms, 0, 60_000)
        _check_range("cap_kbps", self.cap_kbps, 1, 10_000_000)
        _check_range("queue_ms", self.queue_ms, 0, 60_000)
        _check_range("burst_bytes", self.burst_bytes, 1200, 10_000_000)
        if self.repeat:
            self._check_repeat()

    def _check_repeat(self) -> None:
        shared = "a content freeze is room-wide (one encode is shared by every viewer)"
        if self.at_ms is not None:
            raise ValueError(f"repeat_ms: {shared}: time it with room_at_ms, not at_ms")
        if self.room_at_ms is None:
            raise ValueError(f"repeat_ms: {shared}: give room_at_ms (its start, ms after the room started)")
        if self.match:
            raise ValueError(f"repeat_ms: {shared}: it cannot have a match")
        if self.duration_ms is None or self.duration_ms <= 0:
            raise ValueError("repeat_ms: must be > 0")
        if self.freeze or any(getattr(self, name) is not None for name in SETTING_FIELDS):
            raise ValueError("repeat_ms: put other impairments in a rule of their own")

    def window(self, join_offset_ms: float) -> tuple[float, float]:
        """(start, end) of the rule on the viewer's time line, ms since join (end may be inf)."""
        start = self.room_at_ms - join_offset_ms if self.room_at_ms is not None else self.at_ms or 0.0
        end = float("inf") if self.duration_ms is None else start + self.duration_ms
        return start, end

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"match": {k: list(v) for k, v in self.match.items()}}
        for name in ("at_ms", "room_at_ms", "duration_ms", *SETTING_FIELDS):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.to_dict() if isinstance(value, BurstLoss) else value
        if self.freeze:
            out["freeze"] = True
        if self.repeat:
            out["repeat"] = True
        return out


def settings_at(rules: Sequence[Rule], t_ms: float, join_offset_ms: float, base: Settings | None = None) -> Settings:
    """The settings in force ``t_ms`` after the join, for ``rules`` already filtered by label."""
    values: dict[str, Any] = {}
    freeze = False
    for rule in rules:
        start, end = rule.window(join_offset_ms)
        if not start <= t_ms < end:
            continue
        for name in SETTING_FIELDS:
            value = getattr(rule, name)
            if value is not None:
                values[name] = value
        freeze = freeze or rule.freeze
    return replace(base or Settings(), freeze=freeze, **values)


def next_change_ms(rules: Sequence[Rule], t_ms: float, join_offset_ms: float) -> float | None:
    """The first rule boundary strictly after ``t_ms`` (ms since join), or None if nothing changes."""
    later = [edge for rule in rules for edge in rule.window(join_offset_ms) if edge > t_ms and edge != float("inf")]
    return min(later) if later else None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A window (relative to room start) in which joins from matching viewers get 503."""

    match: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Label → accepted values; empty: every viewer."""
    room_from_ms: float = 0.0
    """Window start, ms after room start."""
    room_to_ms: float | None = None
    """Window end, ms after room start; None: for ever."""

    def __post_init__(self) -> None:
        _check_range("refuse_joins.room_from_ms", self.room_from_ms, 0, 1e12)
        _check_range("refuse_joins.room_to_ms", self.room_to_ms, 0, 1e12)
        if self.room_to_ms is not None and self.room_to_ms < self.room_from_ms:
            raise ValueError("refuse_joins.room_to_ms: must be ≥ room_from_ms")

    def refuses(self, labels: Mapping[str, str], room_t_ms: float) -> bool:
        """True if a viewer with ``labels`` joining ``room_t_ms`` after room start is refused."""
        end = float("inf") if self.room_to_ms is None else self.room_to_ms
        return self.room_from_ms <= room_t_ms < end and labels_match(self.match, labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "match": {k: list(v) for k, v in self.match.items()},
            "room_from_ms": self.room_from_ms,
            "room_to_ms": self.room_to_ms,
        }
