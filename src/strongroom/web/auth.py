"""Who may use the admin API: a bearer token, judged by a plugin or by the server's token list.

A request carries its token as the `Authorization: Bearer` or `X-Esri-Authorization:
Bearer` header, the query parameter `token` (GET only), the cookie the HTML sign-in page
sets, or the form field `token` of a POST. A `strongroom_authenticate` hook decides first; when
no plugin answers, the token's SHA-256 must be one of the hashes in
`$STRONGROOM_HOME/api-tokens` (one hex hash per line, `#` comments) or in
`$STRONGROOM_API_TOKEN_HASHES` (comma-separated). Tokens themselves are stored nowhere,
so a copy of the file or the environment does not let anyone in.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import pluggy
from starlette.requests import Request

from ..config import strongroom_home, write_private

__all__ = [
    "COOKIE",
    "Credentials",
    "add_token",
    "configured_hashes",
    "credentials",
    "hash_token",
    "is_allowed",
    "new_token",
    "tokens_path",
]

TOKENS_FILE = "api-tokens"
TOKEN_HASHES_ENV = "STRONGROOM_API_TOKEN_HASHES"
#: The cookie the HTML sign-in sets: HttpOnly, SameSite=Strict, scoped to the admin root.
COOKIE = "strongroom_token"
_HEADERS = ("authorization", "x-esri-authorization")


@dataclass(frozen=True, slots=True)
class Credentials:
    """The token a request carries, and whether it came from the sign-in cookie."""

    token: str | None
    from_cookie: bool = False


def tokens_path(home: Path | None = None) -> Path:
    """The token file of `home` (an Engine's; default $STRONGROOM_HOME)."""
    return (home if home is not None else strongroom_home()) / TOKENS_FILE


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def add_token(token: str, home: Path | None = None) -> Path:
    """Add the token's hash to `home`'s token file (rewritten atomically, owner-only);
    return the file."""
    path = tokens_path(home)
    try:
        kept = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        kept = ""
    if kept and not kept.endswith("\n"):
        kept += "\n"
    write_private(path, kept + hash_token(token) + "\n")
    return path


def credentials(request: Request) -> Credentials:
    """The token a request carries outside a POST's body: a header, then a GET's `token`
    query parameter, then the sign-in cookie. All are judged before any body is read; a
    POST's `token` form field is looked for (in the body's first bytes) only without them."""
    for header in _HEADERS:
        scheme, _, value = request.headers.get(header, "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return Credentials(value.strip())
    token = request.query_params.get("token") if request.method != "POST" else None
    if token:
        return Credentials(token)
    cookie = request.cookies.get(COOKIE)
    return Credentials(cookie, from_cookie=True) if cookie else Credentials(None)


def is_allowed(
    token: str | None, request: Request, plugins: pluggy.PluginManager, home: Path
) -> bool:
    """Ask the plugins; if none answers, check the token against the hashes configured
    for `home`."""
    verdict = plugins.hook.strongroom_authenticate(token=token, request=request)
    if verdict is not None:
        return bool(verdict)
    if not token:
        return False
    presented = hash_token(token).encode()
    known_hashes = configured_hashes(home)
    matches = [hmac.compare_digest(presented, known.encode()) for known in known_hashes]
    return any(matches)


def configured_hashes(home: Path | None = None) -> list[str]:
    """Every accepted token hash, from `home`'s token file and the environment."""
    hashes = [h.strip() for h in os.environ.get(TOKEN_HASHES_ENV, "").split(",")]
    try:
        lines = tokens_path(home).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    hashes += [line.split("#", 1)[0].strip() for line in lines]
    return [h.lower() for h in hashes if h]
