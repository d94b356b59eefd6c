"""The scenario file: rooms and their scheduled impairments, as JSON (schema: docs/scenario.md).

``load(path)`` / ``parse(obj)`` return a ``Scenario``; every problem raises ``ValueError`` whose
message starts with the path of the offending field (``rooms[0].impairments[2].loss_pct: ...``).
Unknown keys are errors too, so a typo never silently disables an impairment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from room.config import AudioConfig, Rendition, RoomConfig, ServerConfig
from room.schedule import SETTING_FIELDS, BurstLoss, Refusal, Rule

SCHEMA_VERSION = 1

_TOP_KEYS = {"version", "seed", "rooms", "impairments", "refuse_joins", "description"}
_ROOM_KEYS = {
    "name",
    "codec",
    "renditions",
    "audio",
    "keyframe_interval_s",
    "impairments",
    "refuse_joins",
    "description",
}
_RENDITION_KEYS = {"name", "width", "height", "fps", "kbps"}
# a rule's keys: when and for whom, each setting of room.schedule.Settings, and the two timed events
_RULE_KEYS = {"match", "at_ms", "room_at_ms", "duration_ms", "freeze_ms", "repeat_ms", "description",
              *SETTING_FIELDS}
_REFUSE_KEYS = {"match", "room_from_ms", "room_to_ms", "description"}


@dataclass(frozen=True)
class Scenario:
    """A parsed scenario file."""

    rooms: tuple[RoomConfig, ...]
    """Rooms defined by the file (the top-level rules and refusals already appended to each)."""
    seed: int = 0
    """Seed for the impairment RNGs."""
    rules: tuple[Rule, ...] = ()
    """Top-level rules, for every room (including rooms given on the command line)."""
    refusals: tuple[Refusal, ...] = ()
    """Top-level refusals, for every room."""

    def apply_to(self, room: RoomConfig) -> RoomConfig:
        """``room`` with the scenario's top-level rules and refusals before its own."""
        return replace(room, rules=self.rules + room.rules, refusals=self.refusals + room.refusals)

    def server_config(self, extra_rooms: tuple[RoomConfig, ...] = (), **kwargs: Any) -> ServerConfig:
        """A ServerConfig with the file's rooms plus ``extra_rooms`` (the top-level rules apply to all)."""
        rooms = self.rooms + tuple(self.apply_to(r) for r in extra_rooms)
        return ServerConfig(rooms=rooms or (self.apply_to(RoomConfig("test")),), seed=self.seed, **kwargs)


def _obj(value: Any, path: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{path}: must be a JSON object")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise ValueError(f"{path}.{unknown[0]}: unknown field (allowed: {', '.join(sorted(keys))})")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{path}: must be a JSON array")
    return value


def _match(value: Any, path: str) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: must be an object of label → value or [values]")
    out: dict[str, tuple[str, ...]] = {}
    for key, v in value.items():
        values = v if isinstance(v, list) else [v]
        if not values or not all(isinstance(x, str) for x in values):
            raise ValueError(f"{path}.{key}: must be a string or a non-empty array of strings")
        out[str(key)] = tuple(values)
    return out


def _burst(value: Any, path: str) -> BurstLoss:
    if not isinstance(value, dict):
        raise ValueError(f"{path}: must be an object ({{p, r}} or {{loss_pct, mean_burst_packets}})")
    try:
        if "p" in value or "r" in value:
            obj = _obj(value, path, {"p", "r", "bad_loss", "good_loss"})
            if "p" not in obj or "r" not in obj:
                raise ValueError(f"{'p' if 'p' not in obj else 'r'}: required with the {{p, r}} form")
            return BurstLoss(**obj)
        obj = _obj(value, path, {"loss_pct", "mean_burst_packets"})
        if "loss_pct" not in obj or "mean_burst_packets" not in obj:
            raise ValueError("loss_pct: give {p, r} or both loss_pct and mean_burst_packets")
        return BurstLoss.from_mean(obj["loss_pct"], obj["mean_burst_packets"])
    except ValueError as exc:
        msg = str(exc).removeprefix("burst.")
        raise ValueError(msg if msg.startswith(path) else f"{path}.{msg}") from None


def _rule(value: Any, path: str) -> Rule:
    obj = dict(_obj(value, path, _RULE_KEYS))
    obj.pop("description", None)
    kwargs: dict[str, Any] = {"match": _match(obj.pop("match", None), f"{path}.match")}
    if "burst" in obj:
        kwargs["burst"] = _burst(obj.pop("burst"), f"{path}.burst")
    if "freeze_ms" in obj:
        freeze_ms = obj.pop("freeze_ms")
        if "duration_ms" in obj:
            raise ValueError(f"{path}.freeze_ms: a freeze rule's duration is freeze_ms; drop duration_ms")
        if isinstance(freeze_ms, bool) or not isinstance(freeze_ms, int | float) or not 0 < freeze_ms <= 3_600_000:
            raise ValueError(f"{path}.freeze_ms: {freeze_ms!r} must be a number in (0, 3600000]")
        kwargs.update(freeze=True, duration_ms=freeze_ms)
    if "repeat_ms" in obj:
        repeat_ms = obj.pop("repeat_ms")
        if "duration_ms" in obj or "duration_ms" in kwargs:
            raise ValueError(f"{path}.repeat_ms: a content freeze's duration is repeat_ms; drop duration_ms")
        if isinstance(repeat_ms, bool) or not isinstance(repeat_ms, int | float) or not 0 < repeat_ms <= 3_600_000:
            raise ValueError(f"{path}.repeat_ms: {repeat_ms!r} must be a number in (0, 3600000]")
        kwargs.update(repeat=True, duration_ms=repeat_ms)
    if "rendition" in obj and not isinstance(obj["rendition"], str):
        raise ValueError(f"{path}.rendition: must be a rendition name (string)")
    kwargs.update(obj)
    try:
        return Rule(**kwargs)
    except ValueError as exc:
        raise ValueError(f"{path}.{exc}") from None


def _refusal(value: Any, path: str) -> Refusal:
    obj = dict(_obj(value, path, _REFUSE_KEYS))
    obj.pop("description", None)
    match = _match(obj.pop("match", None), f"{path}.match")
    try:
        return Refusal(match=match, **obj)
    except ValueError as exc:
        raise ValueError(f"{path}.{str(exc).removeprefix('refuse_joins.')}") from None


def _rendition(value: Any, path: str) -> Rendition:
    obj = dict(_obj(value, path, _RENDITION_KEYS))
    for key in ("width", "height", "fps", "kbps"):
        if key not in obj:
            raise ValueError(f"{path}.{key}: required")
    obj.setdefault("name", f"{obj['height']}p")
    try:
        return Rendition(**obj)
    except ValueError as exc:
        raise ValueError(f"{path}.{str(exc).removeprefix('rendition.')}") from None


def _room(value: Any, path: str) -> RoomConfig:
    obj = _obj(value, path, _ROOM_KEYS)
    if "name" not in obj:
        raise ValueError(f"{path}.name: required")
    kwargs: dict[str, Any] = {"name": obj["name"]}
    if "codec" in obj:
        kwargs["codec"] = str(obj["codec"]).lower()
    if "renditions" in obj:
        kwargs["renditions"] = tuple(
            _rendition(r, f"{path}.renditions[{i}]")
            for i, r in enumerate(_list(obj["renditions"], f"{path}.renditions"))
        )
    if "audio" in obj:
        audio = obj["audio"]
        if audio is False or audio is None:
            kwargs["audio"] = None
        elif audio is True:
            kwargs["audio"] = AudioConfig()
        else:
            a = _obj(audio, f"{path}.audio", {"freq_hz", "kbps"})
            try:
                kwargs["audio"] = AudioConfig(**a)
            except ValueError as exc:
                raise ValueError(f"{path}.{exc}") from None
    if "keyframe_interval_s" in obj:
        kwargs["keyframe_interval_s"] = obj["keyframe_interval_s"]
    kwargs["rules"] = tuple(
        _rule(r, f"{path}.impairments[{i}]")
        for i, r in enumerate(_list(obj.get("impairments", []), f"{path}.impairments"))
    )
    kwargs["refusals"] = tuple(
        _refusal(r, f"{path}.refuse_joins[{i}]")
        for i, r in enumerate(_list(obj.get("refuse_joins", []), f"{path}.refuse_joins"))
    )
    try:
        return RoomConfig(**kwargs)
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith("room.impairments"):
            raise ValueError(f"{path}.{msg.removeprefix('room.')}") from None
        raise ValueError(f"{path}.{msg.removeprefix('room.')}") from None


def parse(obj: Any) -> Scenario:
    """Validate a decoded scenario document."""
    top = _obj(obj, "scenario", _TOP_KEYS)
    version = top.get("version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ValueError(f"version: {version!r} is not supported (this room reads version {SCHEMA_VERSION})")
    seed = top.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: {seed!r} must be an integer")
    rules = tuple(_rule(r, f"impairments[{i}]") for i, r in enumerate(_list(top.get("impairments", []), "impairments")))
    refusals = tuple(
        _refusal(r, f"refuse_joins[{i}]") for i, r in enumerate(_list(top.get("refuse_joins", []), "refuse_joins"))
    )
    scenario = Scenario(rooms=(), seed=seed, rules=rules, refusals=refusals)
    rooms = tuple(
        scenario.apply_to(_room(r, f"rooms[{i}]")) for i, r in enumerate(_list(top.get("rooms", []), "rooms"))
    )
    names = [r.name for r in rooms]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValueError(f"rooms[{i}].name: duplicate room name {name!r}")
    for room in rooms:  # top-level rules may name renditions: each room must have them
        try:
            RoomConfig(**{f: getattr(room, f) for f in room.__dataclass_fields__})
        except ValueError as exc:
            raise ValueError(f"room {room.name!r}: {exc}") from None
    return replace(scenario, rooms=rooms)


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file (JSON)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"scenario: {path} is not valid JSON: {exc}") from None
    return parse(obj)
