"""Validate a whole batch of viewer events column by column, yielding the numpy columns the store inserts.

``collector.events.event_row`` validates one event per call: 17 fields × 1,000 events of Python
bytecode (~5 ms per 1,000 events unloaded). Here each field is checked once per batch with C-level
loops: ``map(dict.get, …)`` to pull a column, ``set(map(type, …))`` for types, one regular expression
over the column joined by newlines for ids and dimensions, numpy for ranges and timestamps.

The fast path is conservative: anything it is not sure of (a NaN, an offset other than ``Z``, a
timestamp with microseconds, ``t`` and ``t_ms`` mixed in one batch, …) sends the whole batch to
``event_row``, which names the first invalid item or returns the rows. So a batch is accepted, and with
exactly the values, iff ``event_row`` accepts every item (tested with hypothesis).
"""

from __future__ import annotations

import re
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from collector.events import _KNOWN_T, _OPT_DIMS, _QOE_FIELDS, _T_HI, _T_LO, EVENT_TYPES, ROW_FIELDS, event_row

_ID = "[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
_DIM = "[^\x00-\x1f]{1,64}"  # excludes "\n", the separator below
# one fullmatch over "v1\nv2\n…": every value must match on its own (no value can contain "\n")
_IDS = re.compile(f"(?:{_ID}\n)*{_ID}")
_DIMS = re.compile(f"(?:{_DIM}\n)*{_DIM}")
# the timestamps the fast path converts with numpy: UTC "Z", whole seconds or milliseconds, and only
# field values datetime.fromisoformat also accepts (numpy refuses impossible days like 02-30 itself)
_TS = (
    "20[0-9]{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    "T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{3})?Z"
)
_TSS = re.compile(f"(?:{_TS}\n)*{_TS}")
_STR = frozenset({str})
_STR_NONE = frozenset({str, type(None)})
_INT_NONE = frozenset({int, type(None)})
_NUM_NONE = frozenset({int, float, type(None)})
_INT = frozenset({int})
_REQUIRED_IDS = ("event_id", "viewer_id", "session_id")
_INT_COLUMNS = frozenset({"stall_count", "height"})

Column = npt.NDArray[Any]


Packed = tuple[dict[str, str], dict[str, Column]]
_STRINGS = ("event_id", "viewer_id", "session_id", "room", "type", "region", "isp", "cdn", "device", "app_version")
_SEP, _NONE = "\x00", "\x01"


class EventColumns:
    """A validated batch: ``columns`` maps every ``ROW_FIELDS`` name to a numpy array of ``n`` values.

    Strings are object arrays (None = NULL), ``t_ms`` int64 (ms since the Unix epoch), the QoE fields
    float64 with NaN = not sent (``stall_count``/``height`` are whole numbers stored as float64).

    Between processes (``collector.parse_pool``, ``collector.store_process``) a batch travels packed
    (``packed()``): each string column one string joined by ``\\x00`` (``\\x01`` = None; validated ids
    and dimensions hold no control characters), numeric columns as numpy arrays; pickling that costs
    ~0.3 ms per 1,000 events against ~3 ms for object arrays. A batch made ``from_packed`` unpacks only
    when its ``columns`` are read, so one passed on from a parse worker to the store process never is.
    """

    __slots__ = ("_columns", "_packed", "n")

    def __init__(self, n: int, columns: dict[str, Column] | None = None, *, packed: Packed | None = None) -> None:
        if columns is None and packed is None:
            raise ValueError("EventColumns: columns or packed")
        self.n = n
        self._columns = columns
        self._packed = packed

    @classmethod
    def from_packed(cls, n: int, packed: Packed) -> EventColumns:
        return cls(n, packed=packed)

    @property
    def columns(self) -> dict[str, Column]:
        if self._columns is None:
            assert self._packed is not None
            strings, numbers = self._packed
            out: dict[str, Any] = dict(numbers)
            for k, s in strings.items():
                vals: list[Any] = s.split(_SEP) if self.n else []
                if _NONE in s:
                    vals = [None if v == _NONE else v for v in vals]
                out[k] = np.array(vals, dtype=object)
            self._columns = {k: out[k] for k in ROW_FIELDS}
        return self._columns

    def packed(self) -> Packed:
        """The columns in their compact, fast-pickling form (computed once)."""
        if self._packed is None:
            c = self.columns
            strings = {k: _SEP.join([_NONE if v is None else v for v in c[k].tolist()]) for k in _STRINGS}
            self._packed = (strings, {k: v for k, v in c.items() if k not in strings})
        return self._packed

    @property
    def event_ids(self) -> Column:
        return self.columns["event_id"]

    def distinct_ids(self) -> int:
        """How many different ``event_id`` values the batch holds (read from the packed form if that is
        all there is, without unpacking the columns)."""
        if self._columns is None and self._packed is not None:
            return len(set(self._packed[0]["event_id"].split(_SEP))) if self.n else 0
        return len(set(self.event_ids.tolist()))


class BatchError(ValueError):
    """Item ``index`` of the batch is invalid; the message names the field like ``event_row``'s.

    ``items``: the batch's size, when the raiser knows it and the catcher may not (``parse_event_body``).
    """

    def __init__(self, index: int, message: str, *, items: int | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.items = items


def event_columns(items: list[Any]) -> EventColumns:
    """Validate every item (all-or-nothing) and return the batch as columns.

    Raises ``BatchError`` for the first invalid item, with ``event_row``'s message.
    """
    cols = _fast(items)
    if cols is not None:
        return EventColumns(len(items), cols)
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    try:
        for item in items:
            append(event_row(item))
    except ValueError as e:
        raise BatchError(len(rows), str(e)) from None
    return rows_to_columns(rows)


def rows_to_columns(rows: list[tuple[Any, ...]]) -> EventColumns:
    """``event_row`` tuples → ``EventColumns`` (the slow path, and tests)."""
    n = len(rows)
    transposed = list(zip(*rows, strict=True)) if rows else [() for _ in ROW_FIELDS]
    out: dict[str, Column] = {}
    for name, col in zip(ROW_FIELDS, transposed, strict=True):
        if name == "t_ms":
            out[name] = np.fromiter(col, dtype=np.int64, count=n)
        elif name in _NUMERIC:
            out[name] = np.array([np.nan if x is None else x for x in col], dtype=np.float64)
        else:
            out[name] = np.array(col, dtype=object)
    return EventColumns(n, out)


_NUMERIC = frozenset(n for n, _, _ in _QOE_FIELDS)


def _fast(items: list[Any]) -> dict[str, Column] | None:
    """The columns if every item passes the conservative checks, else None (nothing is decided)."""
    n = len(items)
    if not n or set(map(type, items)) != {dict}:
        return None
    keys: set[str] = set().union(*items)
    if not keys <= _KNOWN_T:
        return None
    get = dict.get
    out: dict[str, Column] = {}

    def column(name: str) -> list[Any]:
        return list(map(get, items, repeat(name, n)))

    for name in _REQUIRED_IDS:
        col = column(name)
        if set(map(type, col)) != _STR or not _all_match(_IDS, col):
            return None
        out[name] = np.array(col, dtype=object)
    col = column("room")
    if set(map(type, col)) != _STR or not _all_match(_DIMS, col):
        return None
    out["room"] = np.array(col, dtype=object)
    col = column("type")
    if set(map(type, col)) != _STR or not set(col) <= _TYPES:
        return None
    out["type"] = np.array(col, dtype=object)
    t = _times(items, keys, column)
    if t is None:
        return None
    out["t_ms"] = t
    for name in _OPT_DIMS:
        if name not in keys:
            out[name] = np.full(n, None, dtype=object)
            continue
        col = column(name)
        types = set(map(type, col))
        if not types <= _STR_NONE:
            return None
        present = col if type(None) not in types else [v for v in col if v is not None]
        if present and not _all_match(_DIMS, present):
            return None
        out[name] = np.array(col, dtype=object)
    for name, lo, hi in _QOE_FIELDS:
        if name not in keys:
            out[name] = np.full(n, np.nan)
            continue
        col = column(name)
        types = set(map(type, col))
        if not types <= (_INT_NONE if name in _INT_COLUMNS else _NUM_NONE):
            return None
        try:
            if type(None) in types:
                # elementwise in C (a Python-level pass per value cost ~2.5 ms per 1,000 events)
                obj = np.array(col, dtype=object)
                sent = obj != None  # noqa: E711 (numpy compares each element with None)
                arr = np.full(n, np.nan)
                arr[sent] = obj[sent].astype(np.float64)
                ok = ~sent | ((arr >= lo) & (arr <= hi))  # a sent NaN fails the range: refused
            else:
                arr = np.array(col, dtype=np.float64)
                ok = (arr >= lo) & (arr <= hi)
        except OverflowError:  # an int beyond float64: out of range anyway, let event_row say so
            return None
        if not ok.all():
            return None
        out[name] = arr
    return out


_TYPES = frozenset(EVENT_TYPES)


def _all_match(pattern: re.Pattern[str], values: list[str]) -> bool:
    """Every value matches ``pattern``'s single-value part: one fullmatch over the values joined by
    newlines, which the patterns never match, after making sure no value brings a newline of its own."""
    joined = "\n".join(values)
    return joined.count("\n") == len(values) - 1 and pattern.fullmatch(joined) is not None


def _times(items: list[Any], keys: set[str], column: Any) -> Column | None:
    """``t_ms`` for the batch when every item has an RFC 3339 ``Z`` time or every item an integer ``t_ms``."""
    n = len(items)
    if "t" in keys and "t_ms" not in keys:
        col = column("t")
        if set(map(type, col)) != _STR or not _all_match(_TSS, col):
            return None
        try:
            # numpy warns about (deprecated) zone designators: parse the naive UTC text instead
            t = np.array([s[:-1] for s in col], dtype="datetime64[ms]").astype(np.int64)
        except ValueError:  # an impossible day (02-30): event_row words the error
            return None
    elif "t_ms" in keys and "t" not in keys:
        col = column("t_ms")
        if set(map(type, col)) != _INT:
            return None
        try:
            t = np.array(col, dtype=np.int64)
        except OverflowError:
            return None
    else:
        return None
    if len(t) != n or not ((t >= _T_LO) & (t < _T_HI)).all():
        return None
    return t
