"""A POST's form, read only as far as the caller has earned.

Before a request is authenticated, at most TOKEN_WINDOW bytes of its body are read, to
find a `token` form field; after, at most MAX_FORM_BYTES. Both limits count the bytes
that actually arrive, so a chunked body (no Content-Length) or a lying header gets no
further than an honest one. The whole form is held in memory (it is small) and never
spooled to disk: a multipart file part is refused.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Iterable
from urllib.parse import parse_qsl

from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from .responses import ApiError

__all__ = ["MAX_FORM_BYTES", "TOKEN_WINDOW", "Body", "Fields", "single_values"]

#: The largest form an authenticated caller may send: these are small forms.
MAX_FORM_BYTES = 1024 * 1024
#: How much of a body is read to find its `token` field, before anyone is authenticated.
TOKEN_WINDOW = 64 * 1024
#: More fields than any operation takes, and few enough to parse cheaply.
MAX_FIELDS = 100
_URLENCODED = "application/x-www-form-urlencoded"
#: Bodies that carry no parameter whatever their type (a client's `post(url, {})`).
_EMPTY = frozenset({b"", b"{}", b"[]", b"null"})
#: The parameters whose values are or may be secrets: a store's settings and option
#: values may hold a credential typed by mistake.
SECRET_FIELDS = re.compile(r"passcode|token|settings|option\d+Value")


class Fields(dict[str, str]):
    """A request's parameters. Its repr shows no secret's value: a traceback's locals, and
    an error reporter that records them, see the parameters of every frame that holds them."""

    def __repr__(self) -> str:
        hidden = {k: "********" if SECRET_FIELDS.fullmatch(k) else v for k, v in self.items()}
        return repr(hidden)


class Body:
    """A request's body, read from the client in steps, never past the limit asked for."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._chunks = request.stream()
        self._data = bytearray()
        self._complete = False

    async def head(self) -> Fields:
        """The form fields that end within the first TOKEN_WINDOW bytes (all of a shorter
        form): where a caller that sends no header or cookie puts its `token`."""
        await self._read(TOKEN_WINDOW)
        if self._complete:
            return Fields(await self._parse(strict=False))
        if not self._content_type().startswith(_URLENCODED):
            return Fields()
        window = bytes(self._data[:TOKEN_WINDOW])
        return Fields(_urlencoded(window[: window.rfind(b"&")], strict=False))

    async def form(self, limit: int = MAX_FORM_BYTES) -> Fields:
        """Every field of the form, or 413 once more than `limit` bytes have arrived."""
        await self._read(limit)
        if not self._complete:
            raise ApiError(413, f"The request body is larger than {limit} bytes.")
        if bytes(self._data).strip() not in _EMPTY and not self._is_form():
            raise ApiError(
                415,
                "Send the parameters as form fields (application/x-www-form-urlencoded or "
                "multipart/form-data), not as "
                f"{self._content_type().split(';')[0] or 'a body without a Content-Type'}.",
            )
        return single_values(await self._parse())

    async def _read(self, limit: int) -> None:
        """Read until the body ends or more than `limit` bytes are here."""
        while not self._complete and len(self._data) <= limit:
            try:
                chunk = await anext(self._chunks, None)
            except ClientDisconnect:  # nobody reads the answer; a traceback would fill logs
                raise ApiError(
                    400, "The client went away before its request's body ended."
                ) from None
            if chunk is None:
                self._complete = True
            else:
                self._data += chunk

    async def _parse(self, *, strict: bool = True) -> list[tuple[str, str]]:
        content_type = self._content_type()
        if content_type.startswith(_URLENCODED):
            return _urlencoded(bytes(self._data), strict=strict)
        if content_type.startswith("multipart/form-data"):
            return await self._multipart()
        return []

    async def _multipart(self) -> list[tuple[str, str]]:
        async def replay() -> AsyncGenerator[bytes, None]:
            yield bytes(self._data)

        parser = MultiPartParser(
            self._request.headers,
            replay(),
            max_files=0,
            max_fields=MAX_FIELDS,
            max_part_size=MAX_FORM_BYTES,
        )
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ApiError(
                400, f"The form cannot be read ({exc.message}); send fields only, no files."
            ) from None
        return [(key, value) for key, value in form.multi_items() if isinstance(value, str)]

    def _content_type(self) -> str:
        return self._request.headers.get("content-type", "").lower()

    def _is_form(self) -> bool:
        return self._content_type().startswith((_URLENCODED, "multipart/form-data"))


def _urlencoded(data: bytes, *, strict: bool) -> list[tuple[str, str]]:
    """The fields; with `strict`, a %XX that is not UTF-8 is refused, else replaced (only
    to find a token before authentication: the status of a refusal is then 401)."""
    try:
        fields = parse_qsl(
            data.decode("utf-8"),
            keep_blank_values=True,
            errors="strict" if strict else "replace",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, f"The form is not UTF-8 text of at most {MAX_FIELDS} fields.") from None
    return fields


def single_values(fields: Iterable[tuple[str, str]]) -> Fields:
    """The parameters, each given once: a second value was silently dropped (the first
    `path` of two, a second `f`), so a call did less than it was asked and said success."""
    params = Fields()
    for key, value in fields:
        if key in params:
            raise ApiError(400, f"The parameter {key} is given more than once; give it once.")
        params[key] = value
    return params
