"""Room configuration: renditions, codec, audio, and the ``--room NAME[:WxH@FPS:CODEC:KBPS]`` spec.

Pure data, validated on construction (``ValueError`` naming the field). The scenario file
(``room/scenario.py``) builds these too, and adds the impairment rules (``room/schedule.py``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from probe import marker
from room.schedule import Refusal, Rule

CODECS = ("vp8", "h264")
"""Video codecs the room can publish (aiortc's VP8 via libvpx, H.264 via libx264)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(value: str, field_name: str) -> str:
    """Return ``value`` if it is a valid room/rendition name (URL-safe, 1–64 chars), else ValueError."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{field_name}: {value!r} is not a valid name (letters, digits, '_', '.', '-'; ≤ 64)")
    return value


@dataclass(frozen=True, slots=True)
class Rendition:
    """One encoding of the room's pattern. Every rendition is encoded once, shared by its viewers."""

    name: str
    """Rendition name, used by ``rendition`` impairments (e.g. ``360p``)."""
    width: int
    """Frame width, pixels (even, ≥ 64)."""
    height: int
    """Frame height, pixels (even, tall enough for the marker strip)."""
    fps: float
    """Frames per second (1–120)."""
    kbps: int
    """Target video bitrate, kbit/s (CBR-ish)."""

    def __post_init__(self) -> None:
        check_name(self.name, "rendition.name")
        for name, value in (("width", self.width), ("height", self.height)):
            if not isinstance(value, int) or value < 64 or value > 4096 or value % 2:
                raise ValueError(f"rendition.{name}: {value!r} must be an even integer in 64..4096")
        if marker.strip_height(self.width) > self.height // 2:
            raise ValueError(f"rendition.height: {self.height} too small for a {self.width}-wide marker strip")
        if not isinstance(self.fps, int | float) or not 1 <= self.fps <= 120:
            raise ValueError(f"rendition.fps: {self.fps!r} must be in 1..120")
        if not isinstance(self.kbps, int) or not 50 <= self.kbps <= 50_000:
            raise ValueError(f"rendition.kbps: {self.kbps!r} must be an integer in 50..50000")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "kbps": self.kbps,
        }


@dataclass(frozen=True, slots=True)
class AudioConfig:
    """The room's audio: a sine tone encoded once as Opus (48 kHz stereo, 20 ms frames)."""

    freq_hz: float = 440.0
    """Tone frequency, Hz."""
    kbps: int = 32
    """Opus bitrate, kbit/s."""

    def __post_init__(self) -> None:
        if not isinstance(self.freq_hz, int | float) or not 20 <= self.freq_hz <= 20_000:
            raise ValueError(f"audio.freq_hz: {self.freq_hz!r} must be in 20..20000")
        if not isinstance(self.kbps, int) or not 6 <= self.kbps <= 510:
            raise ValueError(f"audio.kbps: {self.kbps!r} must be an integer in 6..510")

    def to_dict(self) -> dict[str, Any]:
        return {"codec": "opus", "freq_hz": self.freq_hz, "kbps": self.kbps}


DEFAULT_RENDITION = Rendition(name="720p", width=1280, height=720, fps=30, kbps=1500)


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """A named room: what it publishes and the impairments its viewers get."""

    name: str
    """Room name, the ``<room>`` in ``/whep/<room>``."""
    codec: str = "vp8"
    """Video codec for every rendition: ``vp8`` or ``h264``."""
    renditions: tuple[Rendition, ...] = (DEFAULT_RENDITION,)
    """Renditions; viewers join the first one unless a rule moves them."""
    audio: AudioConfig | None = field(default_factory=AudioConfig)
    """Audio tone, or None for a video-only room."""
    keyframe_interval_s: float = 4.0
    """Periodic keyframe interval, s (keyframes are also forced on joins, PLI, freeze resume, switch)."""
    rules: tuple[Rule, ...] = ()
    """Impairment rules, in file order (a later active rule overrides an earlier one per field)."""
    refusals: tuple[Refusal, ...] = ()
    """When joins are refused (503)."""

    def __post_init__(self) -> None:
        check_name(self.name, "room.name")
        if self.codec not in CODECS:
            raise ValueError(f"room.codec: {self.codec!r} must be one of {', '.join(CODECS)}")
        if not self.renditions:
            raise ValueError("room.renditions: at least one rendition is needed")
        names = [r.name for r in self.renditions]
        if len(set(names)) != len(names):
            raise ValueError(f"room.renditions: duplicate rendition names in {names}")
        if not isinstance(self.keyframe_interval_s, int | float) or not 0.2 <= self.keyframe_interval_s <= 600:
            raise ValueError(f"room.keyframe_interval_s: {self.keyframe_interval_s!r} must be in 0.2..600")
        for i, rule in enumerate(self.rules):
            if rule.rendition is not None and rule.rendition not in names:
                raise ValueError(f"room.impairments[{i}].rendition: {rule.rendition!r} is not one of {names}")

    def rendition(self, name: str | None) -> Rendition:
        """The rendition called ``name``; the first (default) one for None."""
        if name is None:
            return self.renditions[0]
        for r in self.renditions:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "codec": self.codec,
            "renditions": [r.to_dict() for r in self.renditions],
            "audio": self.audio.to_dict() if self.audio else None,
            "keyframe_interval_s": self.keyframe_interval_s,
            "impairments": [r.to_dict() for r in self.rules],
            "refuse_joins": [r.to_dict() for r in self.refusals],
        }


_SPEC = re.compile(
    r"^(?P<name>[^:]+)"
    r"(?::(?P<w>\d+)x(?P<h>\d+)(?:@(?P<fps>\d+(?:\.\d+)?))?)?"
    r"(?::(?P<codec>[A-Za-z0-9]+))?"
    r"(?::(?P<kbps>\d+))?$"
)


def parse_room_spec(spec: str) -> RoomConfig:
    """Parse ``NAME[:WxH[@FPS]][:CODEC][:KBPS]`` (e.g. ``lobby:640x360@25:h264:800``) into a RoomConfig.

    Missing parts take the defaults of the ``test`` room (1280x720@30, VP8, 1500 kbps).
    """
    m = _SPEC.match(spec.strip())
    if not m:
        raise ValueError(f"--room: {spec!r} is not NAME[:WxH[@FPS]][:CODEC][:KBPS]")
    d = DEFAULT_RENDITION
    width, height = (int(m["w"]), int(m["h"])) if m["w"] else (d.width, d.height)
    fps_text = m["fps"]
    fps: float = d.fps if fps_text is None else (float(fps_text) if "." in fps_text else int(fps_text))
    kbps = int(m["kbps"]) if m["kbps"] else d.kbps
    rendition = Rendition(name=f"{height}p", width=width, height=height, fps=fps, kbps=kbps)
    codec = (m["codec"] or "vp8").lower()
    return RoomConfig(name=check_name(m["name"], "--room name"), codec=codec, renditions=(rendition,))


def _default_rooms() -> tuple[RoomConfig, ...]:
    return (RoomConfig(name="test"),)


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``room.server.create_app`` needs."""

    rooms: tuple[RoomConfig, ...] = field(default_factory=_default_rooms)
    """The rooms served, by name (default: one room ``test``, 1280x720@30 VP8 1500 kbps, Opus tone)."""
    ice_host: str = "127.0.0.1"
    """The only address ICE gathers host candidates on (no STUN/TURN, ever)."""
    seed: int = 0
    """Seed of the impairment RNGs (viewer n of room R uses ``Random(f"{seed}:{R}:{n}")``)."""
    encoder_threads: int = 1
    """Threads per video encoder (libvpx/libx264)."""
    fast_send: bool = True
    """Send the shared, once-packetized payloads with ``room/fastsend.py`` instead of aiortc's per-viewer loop."""
    udp_gso: bool = False
    """Send each frame's packets to a viewer with one UDP GSO ``sendmsg`` (``room/fastsend.py``). Off by
    default: firewalls and qdiscs on the sending host or on a veth path (nftables drops, tc netem) then see one
    packet per frame instead of one per RTP packet, so path impairments outside the room would hit whole
    frames. For capacity measurements on loopback."""
    clock: Callable[[], float] = time.monotonic
    """Monotonic clock, s: pacing, schedules, shaping."""
    wall_clock: Callable[[], float] = time.time
    """Wall clock, s since the Unix epoch: marker capture times and the truth record."""

    def __post_init__(self) -> None:
        names = [r.name for r in self.rooms]
        if len(set(names)) != len(names):
            raise ValueError(f"rooms: duplicate room names in {names}")
        if not self.rooms:
            raise ValueError("rooms: at least one room is needed")
