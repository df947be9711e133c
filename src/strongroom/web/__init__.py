"""The disaster-recovery admin API and its HTML pages, as an ASGI app; see docs/API.md."""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
