"""Bearer-token authentication and role checks.

The presented token is compared with *every* configured token (``hmac.compare_digest`` over SHA-256
digests, so neither the match position nor the secret's length leaks through timing), and is never
logged: logs and metrics carry the token's ``name`` and ``role``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from aiohttp import web

from collector.config import Token
from collector.errors import ApiError

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="streamqoe"'}


class TokenTable:
    """The configured tokens, with their digests precomputed."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self._entries = [(hashlib.sha256(t.secret.encode()).digest(), t) for t in tokens]

    def lookup(self, presented: str) -> Token | None:
        """The token whose secret equals ``presented``, compared in constant time against all of them."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: Token | None = None
        for d, t in self._entries:
            if hmac.compare_digest(d, digest):
                found = t
        return found

    def authenticate(self, request: web.Request) -> Token:
        """The request's token; ``ApiError(401)`` if it is missing or unknown."""
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)", headers=_CHALLENGE)
        token = self.lookup(presented.strip())
        if token is None:
            raise ApiError(401, "unknown token", headers=_CHALLENGE)
        return token


def require_role(token: Token, *roles: str) -> None:
    """``ApiError(403)`` unless ``token`` has one of ``roles``."""
    if token.role not in roles:
        raise ApiError(403, f"token {token.name!r} has role {token.role!r}; this needs {' or '.join(roles)}")
