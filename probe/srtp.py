"""SRTP protect/unprotect for one pylibsrtp ``Session`` without its per-call allocation.

``Session.protect``/``unprotect`` allocate an ``int *`` with ``ffi.new`` on every call, about half the
cost of the call for a media packet. ``fast_op`` binds the session's libsrtp handle, buffer and one
length cell once and returns a function doing the same work. It uses pylibsrtp's private attributes
(tested with pylibsrtp 1.0); when they are missing it returns the session's own method, which is
slower but equivalent. Both the room's direct send path and the probe's direct receive path use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Op = Callable[[bytes], bytes]


def fast_op(session: Any, name: str) -> tuple[Op, bool]:
    """``(op, fast)`` for ``name`` in {"protect", "unprotect"}; ``fast`` is False for the fallback.

    ``op`` raises ``pylibsrtp.Error`` when libsrtp refuses a packet (authentication failure, replay)
    and ``ValueError`` when the packet does not fit the session's buffer, as pylibsrtp does.
    """
    ip = in_place(session, name)
    if ip is None:
        fallback: Op = getattr(session, name)
        return fallback, False
    # the same steps as ``InPlace.run``, inlined: this runs once per packet on both hot paths
    # ``ip`` stays referenced by ``op`` (its error branch), so the session and its libsrtp context live on
    func, srtp, cdata, len_p, buffer, max_len = ip.call_parts()

    def op(data: bytes) -> bytes:
        n = len(data)
        if n > max_len:
            raise ValueError("packet is too long")
        len_p[0] = n
        buffer[0:n] = data
        rc = func(srtp, cdata, len_p)
        if rc:
            ip.check(rc)  # raises pylibsrtp.Error
        out: bytes = buffer[0 : len_p[0]]
        return out

    return op, True


class InPlace:
    """libsrtp run on a session's own buffer, for a caller that writes the plain packet there itself.

    Write the packet into ``view[:n]`` (``n <= max_len``), call ``run(n)``: the protected (or unprotected)
    packet is ``view[:returned length]``, valid until the next call on this session. Saves building
    the plain packet as a ``bytes`` and copying it in, and copying the result out. Same private
    attributes as ``fast_op``; ``in_place`` returns None without them.
    """

    def __init__(self, session: Any, name: str) -> None:
        import pylibsrtp
        from pylibsrtp import _binding

        self._check: Callable[[int], None] = pylibsrtp._srtp_assert
        self._session = session  # its libsrtp context must outlive this object (freed with the session)
        self._srtp, self._cdata = session._srtp[0], session._cdata
        self._func = getattr(_binding.lib, f"srtp_{name}")
        trailer = pylibsrtp.SRTP_MAX_TRAILER_LEN if name == "protect" else 0
        self.max_len: int = len(self._cdata) - trailer
        self._buffer = session._buffer
        self.view = memoryview(self._buffer)
        self._len_p = _binding.ffi.new("int *")

    def call_parts(self) -> tuple[Any, Any, Any, Any, Any, int]:
        """(libsrtp function, context, buffer cdata, length cell, buffer, max length) for a caller that inlines
        ``run`` (see ``fast_op``); it must keep this object alive and call ``check`` on a non-zero result."""
        return self._func, self._srtp, self._cdata, self._len_p, self._buffer, self.max_len

    def check(self, rc: int) -> None:
        """Raise ``pylibsrtp.Error`` for libsrtp's error code ``rc`` (non-zero)."""
        self._check(rc)

    def run(self, n: int) -> int:
        """Protect/unprotect ``view[:n]`` in place; the new length. ``pylibsrtp.Error`` as pylibsrtp."""
        len_p = self._len_p
        len_p[0] = n
        rc = self._func(self._srtp, self._cdata, len_p)
        if rc:
            self.check(rc)
        return int(len_p[0])


def in_place(session: Any, name: str) -> InPlace | None:
    """An ``InPlace`` for ``name`` in {"protect", "unprotect"} on ``session``, or None (private API gone)."""
    try:
        return InPlace(session, name)
    except (ImportError, AttributeError, TypeError):
        return None
