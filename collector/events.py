"""Viewer events from a platform: the wire format of ``POST /v1/events``.

Standard library only (analysis imports it too). One event is a flat JSON object:

    {"event_id": "…", "viewer_id": "…", "session_id": "…", "room": "…",
     "t": "2026-11-21T12:00:00.250Z", "type": "join|leave|heartbeat|qoe",
     "region": "eu", "isp": "…", "cdn": "…", "device": "…", "app_version": "…",
     "startup_ms": 850, "stall_count": 1, "stall_ms": 400, "height": 720, "bitrate_kbps": 1500}

Dimensions (region … app_version) are optional strings; QoE fields are optional and only meaningful
on ``qoe`` beacons (``startup_ms`` may also come with ``join``). ``stall_count``/``stall_ms`` on a
beacon cover the interval since the session's previous beacon; ``watch_ms`` is the playing time in
that interval (so stall ratio = Σ stall_ms / (Σ watch_ms + Σ stall_ms)). docs/wire.md is the reference.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

EVENT_TYPES = ("join", "leave", "heartbeat", "qoe")
DIMENSIONS = ("region", "isp", "cdn", "device", "app_version", "room")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")  # \Z: "$" would also accept a trailing newline
_DIM = re.compile(r"^[^\x00-\x1f]{1,64}\Z")
# (name, lo, hi) for the optional numeric QoE fields
_QOE_FIELDS: tuple[tuple[str, float, float], ...] = (
    ("startup_ms", 0, 600_000),
    ("stall_count", 0, 100_000),
    ("stall_ms", 0, 86_400_000),
    ("watch_ms", 0, 86_400_000),
    ("height", 1, 16_384),
    ("bitrate_kbps", 0, 1_000_000),
)
_INT_FIELDS = frozenset({"stall_count", "height"})
_KNOWN = frozenset(
    (
        *("event_id", "viewer_id", "session_id", "room", "t", "type"),
        *("region", "isp", "cdn", "device", "app_version"),
        *(n for n, _, _ in _QOE_FIELDS),
    )
)
MIN_YEAR, MAX_YEAR = 2020, 2100


@dataclass(frozen=True, slots=True)
class ViewerEvent:
    event_id: str
    """Unique per event; the collector's idempotency key."""
    viewer_id: str
    """Opaque, stable per viewer across sessions (needed for return rate and win-back)."""
    session_id: str
    room: str
    t_ms: int
    """Event time, ms since the Unix epoch (UTC). On the wire: RFC 3339 ``t`` or numeric ``t_ms``."""
    type: str
    region: str | None = None
    isp: str | None = None
    cdn: str | None = None
    device: str | None = None
    app_version: str | None = None
    startup_ms: float | None = None
    stall_count: int | None = None
    stall_ms: float | None = None
    watch_ms: float | None = None
    height: int | None = None
    bitrate_kbps: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The wire form: ``t`` as RFC 3339 UTC with ms, None fields omitted."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if f.name == "t_ms":
                out["t"] = format_t_ms(v)
            else:
                out[f.name] = v
        return out


def format_t_ms(t_ms: int) -> str:
    """RFC 3339 UTC with millisecond precision: ``2026-11-21T12:00:00.250Z``."""
    d = datetime.fromtimestamp(t_ms // 1000, tz=UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S") + f".{t_ms % 1000:03d}Z"


def _parse_t(value: Any) -> int:
    if isinstance(value, str):
        if len(value) > 40:
            raise ValueError("t: too long for a timestamp")
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"t: not an RFC 3339 timestamp: {value[:40]!r}") from None
        off = dt.utcoffset()
        if off is None:
            raise ValueError("t: must carry a UTC offset (e.g. ...Z)")
        if not MIN_YEAR <= dt.year <= MAX_YEAR:
            raise ValueError(f"t: year {dt.year} is not plausible")
        return round(dt.timestamp() * 1000)
    raise ValueError("t: must be an RFC 3339 string")


def _bounds_ms() -> tuple[int, int]:
    lo = int(datetime(MIN_YEAR, 1, 1, tzinfo=UTC).timestamp() * 1000)
    hi = int(datetime(MAX_YEAR, 1, 1, tzinfo=UTC).timestamp() * 1000)
    return lo, hi


_T_LO, _T_HI = _bounds_ms()


#: Column order of ``event_row`` (and of the store's ``viewer_events`` table, before ``received_ms``).
ROW_FIELDS: tuple[str, ...] = (
    "event_id", "viewer_id", "session_id", "room", "t_ms", "type",
    "region", "isp", "cdn", "device", "app_version",
    "startup_ms", "stall_count", "stall_ms", "watch_ms", "height", "bitrate_kbps",
)  # fmt: skip
_KNOWN_T = _KNOWN | {"t_ms"}
_ID_MATCH = _ID.match
_DIM_MATCH = _DIM.match
_EVENT_TYPES = frozenset(EVENT_TYPES)
_OPT_DIMS = ("region", "isp", "cdn", "device", "app_version")


def event_from_dict(d: Any) -> ViewerEvent:
    """Validate one wire event; ``ValueError`` names the field. Unknown fields are rejected."""
    return ViewerEvent(*event_row(d))


def event_row(d: Any) -> tuple[Any, ...]:
    """Validate one wire event like ``event_from_dict`` and return its values in ``ROW_FIELDS`` order.

    The collector's hot path: no dataclass is built (about 3x faster than constructing ``ViewerEvent``).
    """
    if type(d) is not dict and not isinstance(d, dict):
        raise ValueError("event: must be a JSON object")
    if not d.keys() <= _KNOWN_T:
        extra = d.keys() - _KNOWN_T
        raise ValueError(f"{sorted(extra)[0]}: unknown field")
    get = d.get
    event_id = get("event_id")
    viewer_id = get("viewer_id")
    session_id = get("session_id")
    for name, v in (("event_id", event_id), ("viewer_id", viewer_id), ("session_id", session_id)):
        if not isinstance(v, str) or not _ID_MATCH(v):
            raise ValueError(f"{name}: required, 1-128 of letters, digits, . _ : - (got {str(v)[:40]!r})")
    room = get("room")
    if not isinstance(room, str) or not _DIM_MATCH(room):
        raise ValueError("room: required string of 1-64 printable characters")
    typ = get("type")
    if not isinstance(typ, str) or typ not in _EVENT_TYPES:
        raise ValueError(f"type: must be one of {', '.join(EVENT_TYPES)} (got {str(typ)[:20]!r})")
    if "t" in d:
        t_ms = _parse_t(d["t"])
    elif "t_ms" in d:
        v = d["t_ms"]
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError("t_ms: must be an integer (ms since the Unix epoch)")
        t_ms = v
    else:
        raise ValueError("t: required (RFC 3339 UTC) or t_ms (ms since the Unix epoch)")
    if not _T_LO <= t_ms < _T_HI:
        raise ValueError(f"t: not between {MIN_YEAR} and {MAX_YEAR}")
    dims: list[Any] = []
    for name in _OPT_DIMS:
        v = get(name)
        if v is not None and (not isinstance(v, str) or not _DIM_MATCH(v)):
            raise ValueError(f"{name}: must be a string of 1-64 printable characters")
        dims.append(v)
    qoe: list[Any] = []
    for name, lo, hi in _QOE_FIELDS:
        v = get(name)
        if v is not None:
            tv = type(v)
            # exact int/float first (the common case); bool is an int subclass and is refused
            if tv is not int and tv is not float and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise ValueError(f"{name}: must be a number")
            if name in _INT_FIELDS and not isinstance(v, int):
                raise ValueError(f"{name}: must be an integer")
            # the range check first: math.isfinite() raises OverflowError on a huge int; NaN fails it
            if not (lo <= v <= hi and math.isfinite(v)):
                raise ValueError(f"{name}: must be in [{lo}, {hi}]")
        qoe.append(v)
    return (event_id, viewer_id, session_id, room, t_ms, typ, *dims, *qoe)
