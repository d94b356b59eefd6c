"""Signaling adapters: how a probe gets from a URL to a negotiated RTCPeerConnection.

An adapter knows one protocol (WHEP, Janus REST, ...) and nothing about measurement. Adding one means
writing a class with ``join`` and ``leave`` and registering its URL scheme in ``adapter_for_url``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from probe.signaling.base import Signaling, SignalingError


def adapter_for_url(url: str, **options: object) -> Signaling:
    """The adapter for ``url``: ``http(s)://`` → WHEP, ``janus+http(s)://`` → Janus streaming plugin."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        from probe.signaling.whep import WhepSignaling

        return WhepSignaling(url, **options)  # type: ignore[arg-type]
    if parts.scheme in ("janus+http", "janus+https") and parts.netloc:
        from probe.signaling.janus import JanusSignaling  # type: ignore[import-not-found,unused-ignore]

        return JanusSignaling(url, **options)  # type: ignore[no-any-return,unused-ignore]
    raise SignalingError("url_invalid", f"unsupported URL {url!r}: use http(s)://host/whep/ROOM (WHEP) "
                         "or janus+http://host:port/janus?mountpoint=ID")


__all__ = ["Signaling", "SignalingError", "adapter_for_url"]
