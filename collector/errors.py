"""``ApiError``: a 4xx the client can act on, rendered as ``{"error": …, "item": …, "field": …}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class ApiError(Exception):
    """Raised by handlers; the error middleware turns it into a JSON response with ``status``."""

    def __init__(self, status: int, message: str, *, item: int | None = None, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.message = message
        self.item = item
        self.field = field
        self.headers = headers or {}

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.message}
        if self.item is not None:
            body["item"] = self.item
        if self.field is not None:
            body["field"] = self.field
        return web.json_response(body, status=self.status, headers=self.headers)


def field_of(message: str) -> str | None:
    """The field a wire-format ``ValueError`` names: the text before the first ``": "``."""
    head, sep, _ = message.partition(": ")
    return head if sep and len(head) <= 200 else None
