"""How the admin API answers: f=json, f=pjson or f=html, and errors in the admin shape.

Errors are `{"status": "error", "messages": [...], "code": N}` with HTTP status N, as
the products' admin APIs write them; HTML callers get the same messages as a page (or
the sign-in page, for a missing or refused token). Pages are Jinja2 templates with
autoescaping on, so nothing a client sends is ever interpreted as markup, and every value
they show has its control and format characters escaped (`_shown`).

A name from a backup or a source may not be UTF-8 (Python holds its bytes as surrogate
escapes): every answer is encoded by `_utf8`, so such a name goes out as the escape
(`\udcff`, JSON's own escape inside a JSON string) where it would fail the whole answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
import markupsafe
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..errors import (
    BackupExistsError,
    BackupNotFoundError,
    ConfigBusyError,
    ConfigError,
    IntegrityError,
    JobError,
    JobNotFoundError,
    JobStoreUnavailableError,
    ObjectLockedError,
    PasscodeError,
    StoreError,
    StoreUnavailableError,
    StrongroomError,
    UnknownScheduleError,
    UnknownStoreError,
    UnsafeArchiveError,
)
from ..format import printable
from . import readable

__all__ = ["FORMATS", "SUCCESS", "ApiError", "Pages", "Reply", "error_document", "status_of"]

FORMATS = ("html", "json", "pjson")
SUCCESS: Mapping[str, str] = {"status": "success"}

#: HTTP status of each error class; the first match wins, so leaves come before parents.
_STATUS: tuple[tuple[type[StrongroomError], int], ...] = (
    (UnknownStoreError, 404),
    (UnknownScheduleError, 404),
    (BackupNotFoundError, 404),
    (JobNotFoundError, 404),
    (JobStoreUnavailableError, 503),
    (ConfigBusyError, 409),
    (BackupExistsError, 409),
    (ObjectLockedError, 409),
    (JobError, 409),
    (ConfigError, 400),
    (PasscodeError, 400),
    (StoreUnavailableError, 503),
    (IntegrityError, 502),
    (UnsafeArchiveError, 502),
    (StoreError, 502),
)


class ApiError(Exception):
    """An error of the web layer itself: authentication, format, size, routing."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def status_of(error: StrongroomError) -> int:
    return next((code for kind, code in _STATUS if isinstance(error, kind)), 500)


def error_document(code: int, messages: list[str]) -> dict[str, Any]:
    return {"status": "error", "messages": messages, "code": code}


@dataclass(frozen=True, slots=True)
class Reply:
    """What an operation answers: a document, and how a person sees it."""

    document: Mapping[str, Any]
    template: str = "document.html"
    context: Mapping[str, Any] = field(default_factory=dict)
    #: For f=html: send the person here (303) instead of rendering a page.
    redirect: str | None = None
    #: For f=html: the page's HTTP status (a form shown again with its errors is a 400).
    status: int = 200


class Pages:
    """Renders replies and errors in the requested format."""

    def __init__(self) -> None:
        self._templates = jinja2.Environment(
            loader=jinja2.PackageLoader("strongroom.web"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            finalize=_shown,
        )
        readable.register(self._templates)
        self._templates.filters["field"] = _field

    def reply(self, request: Request, fmt: str, reply: Reply, links: Mapping[str, Any]) -> Response:
        if fmt != "html":
            return _json(reply.document, fmt, 200)
        if reply.redirect is not None:
            return RedirectResponse(reply.redirect, status_code=303)
        return self.page(
            request, reply.template, reply.status, links, doc=reply.document, **reply.context
        )

    def error(
        self,
        request: Request,
        fmt: str,
        code: int,
        message: str,
        links: Mapping[str, Any],
        next: str,
    ) -> Response:
        """The error as a document, or as a page (the sign-in page for 401, then `next`)."""
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        if fmt != "html":
            return _json(error_document(code, [message]), fmt, code, headers)
        template = "login.html" if code == 401 else "error.html"
        return self.page(
            request, template, code, links, headers, messages=[message], code=code, next=next
        )

    def page(
        self,
        request: Request,
        template: str,
        status: int,
        links: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> Response:
        html = self._templates.get_template(template).render(request=request, **links, **context)
        return Response(_utf8(html), status, headers, media_type="text/html")


def _shown(value: object) -> object:
    """Every value a template writes (Jinja's finalize, so no template can forget it), its
    control and format characters escaped as `printable` does: a file named
    `evil\\u202etxt.exe` read as `evilexe.txt`, and one holding a line break as a space.
    Markup is the templates' own (a macro's HTML, or a form field's value: `_field`)."""
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return printable(value)
    return value


def _field(value: object) -> markupsafe.Markup:
    """A form field's value as it was given (escaped for HTML, not by `_shown`): a path
    sent back in a hidden field must name the same path."""
    return markupsafe.escape(value)


def _json(
    document: Mapping[str, Any], fmt: str, status: int, headers: Mapping[str, str] | None = None
) -> Response:
    pretty = fmt == "pjson"
    text = json.dumps(
        document,
        ensure_ascii=False,
        allow_nan=False,
        indent=2 if pretty else None,
        separators=None if pretty else (",", ":"),
    )
    return Response(_utf8(text), status, headers, media_type="application/json")


def _utf8(text: str) -> bytes:
    """`text` as UTF-8, a lone surrogate (a name's byte that is not UTF-8) as its escape."""
    return text.encode("utf-8", "backslashreplace")
