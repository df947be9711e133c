"""The headers every admin answer carries, whatever made it (a page, a JSON document, a
redirect, an error, the server's own 500).

- No other page may frame these (`frame-ancestors`, `X-Frame-Options`): a framed page,
  made see-through by a page beside it on the same site, turns two clicks into a deleted
  backup with the administrator's own cookie (clickjacking).
- Nothing is cached (`no-store`): after signing out, Back showed a backup's contents again.
- No Referer goes from the pages to another site (a token given in a GET's URL would go
  with it); `same-origin`, not `no-referrer`, under which a browser sends `Origin: null`
  with the pages' own forms, which the sign-in check then refuses.
- The pages run no script and load nothing (the policy allows their one inline style),
  and nothing is sniffed as another type than it is sent as.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SECURITY_HEADERS", "SecurityHeaders"]

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
)
_NAMES = {name for name, _ in SECURITY_HEADERS}


class SecurityHeaders:
    """ASGI middleware: SECURITY_HEADERS on every HTTP answer, in place of any the app set."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _NAMES]
                message = {**message, "headers": [*kept, *SECURITY_HEADERS]}
            await send(message)

        await self._app(scope, receive, send_with_headers)
