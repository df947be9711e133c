"""Who may use the admin API: a bearer token, judged by a plugin or by the server's token list.

A request carries its token as the `Authorization: Bearer` or `X-Esri-Authorization:
Bearer` header, the query parameter `token` (GET only), the cookie the HTML sign-in page
sets, or the form field `token` of a POST. A `strongroom_authenticate` hook decides first; when
no plugin answers, the token's SHA-256 must be one of the hashes in
`$STRONGROOM_HOME/api-tokens` (one hex hash per line, `#` comments) or in
`$STRONGROOM_API_TOKEN_HASHES` (comma-separated). Tokens themselves are stored nowhere,
so a copy of the file or the environment does not let anyone in. `strongroom token
list` and `remove` name a token by the start of its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pluggy
from starlette.requests import Request

from ..config import editing, strongroom_home, write_private
from ..errors import ConfigError
from ..format import utc_now

__all__ = [
    "COOKIE",
    "MIN_TOKEN_ID",
    "TOKEN_ID",
    "Credentials",
    "TokenEntry",
    "add_token",
    "configured_hashes",
    "credentials",
    "hash_token",
    "is_allowed",
    "new_token",
    "remove_token",
    "token_entries",
    "tokens_path",
]

TOKENS_FILE = "api-tokens"
#: Hex characters of a token's hash that `strongroom token list` shows as its id, and the
#: fewest that `strongroom token remove` takes.
TOKEN_ID = 12
MIN_TOKEN_ID = 8
TOKEN_HASHES_ENV = "STRONGROOM_API_TOKEN_HASHES"
#: The cookie the HTML sign-in sets: HttpOnly, SameSite=Strict, scoped to the admin root.
COOKIE = "strongroom_token"
_HEADERS = ("authorization", "x-esri-authorization")


@dataclass(frozen=True, slots=True)
class Credentials:
    """The token a request carries, and whether it came from the sign-in cookie (its repr
    leaves the token out)."""

    token: str | None = field(repr=False)
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
    """Add the token's hash to `home`'s token file (rewritten atomically, owner-only, under
    the lock of `editing`), with the time it was added as its comment; return the file."""
    path = tokens_path(home)
    added = utc_now().strftime("%Y-%m-%d %H:%M UTC")
    with editing(path):
        kept = _token_lines(path)
        write_private(path, "".join(kept) + f"{hash_token(token)}  # added {added}\n")
    return path


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """An accepted token as `strongroom token list` shows it: its id (the start of its
    hash), its comment, and where it is configured."""

    token_id: str
    comment: str
    source: str

    def to_dict(self) -> dict[str, str]:
        return {"tokenId": self.token_id, "comment": self.comment, "source": self.source}


def token_entries(home: Path | None = None) -> list[TokenEntry]:
    """Every accepted token hash, from `home`'s token file, then the environment."""
    entries = [
        TokenEntry(_hash_of(line)[:TOKEN_ID], line.partition("#")[2].strip(), TOKENS_FILE)
        for line in _token_lines(tokens_path(home))
        if _hash_of(line)
    ]
    for digest in _environment_hashes():
        entries.append(TokenEntry(digest[:TOKEN_ID], "", TOKEN_HASHES_ENV))
    return entries


def remove_token(token_id: str, home: Path | None = None) -> Path:
    """Stop accepting the token of `home`'s token file whose hash starts with `token_id`
    (at least MIN_TOKEN_ID hex characters): every line holding that hash goes; return the
    file. ConfigError, with nothing changed, if no hash or several start so, or if the
    environment accepts it too (removing it from the file would not refuse it)."""
    wanted = token_id.strip().lower()
    if len(wanted) < MIN_TOKEN_ID or not all(c in "0123456789abcdef" for c in wanted):
        raise ConfigError(
            f"A token id is at least {MIN_TOKEN_ID} hex characters of its hash, as "
            "'strongroom token list' shows them."
        )
    if any(digest.startswith(wanted) for digest in _environment_hashes()):
        raise ConfigError(
            f"The token {wanted} is accepted through {TOKEN_HASHES_ENV}; remove it there "
            "(and then here, if 'strongroom token list' still shows it)."
        )
    path = tokens_path(home)
    with editing(path):
        lines = _token_lines(path)
        hashes = {_hash_of(line) for line in lines if _hash_of(line).startswith(wanted)}
        if len(hashes) > 1:
            raise ConfigError(f"{len(hashes)} tokens' hashes start with {wanted}; give more of it.")
        if not hashes:
            raise ConfigError(
                f"No token in {path} has a hash starting with {wanted}; 'strongroom token "
                "list' shows the ids."
            )
        write_private(path, "".join(line for line in lines if _hash_of(line) not in hashes))
    return path


def _token_lines(path: Path) -> list[str]:
    """The token file's lines, each ending in a newline ([] when there is no file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line + "\n" for line in text.splitlines()]


def _hash_of(line: str) -> str:
    """The hash a token file's line holds ("" for a comment or a blank line)."""
    return line.partition("#")[0].strip().lower()


def _environment_hashes() -> list[str]:
    digests = (digest.strip().lower() for digest in os.environ.get(TOKEN_HASHES_ENV, "").split(","))
    return [digest for digest in digests if digest]


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
    from_file = [_hash_of(line) for line in _token_lines(tokens_path(home))]
    return [digest for digest in from_file if digest] + _environment_hashes()
