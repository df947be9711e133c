"""The admin API's stores: list, register, show, make the default, unregister, validate.
Stores are registered only at locations the operator allows (`StoreFence`); what the
edits do to the configuration file is stores.py's."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from typing import Any

from ..config import COMPRESSIONS, StoreSpec
from ..engine import Engine
from ..errors import ConfigError, StrongroomError
from . import stores
from .call import Call, RouteSpec, run
from .fence import StoreFence
from .responses import SUCCESS, ApiError, Reply, status_of

__all__ = ["StoreRoutes", "store_path"]


class StoreRoutes:
    """The handlers under `{dr}/stores`."""

    def __init__(self, engine: Engine, fence: StoreFence) -> None:
        self._engine, self._fence = engine, fence

    def routes(self, dr: str) -> list[RouteSpec]:
        """The routes under the disaster-recovery root's path `dr`; a store's own path is
        `store_path(dr)`."""
        store = store_path(dr)
        return [
            ("stores", f"{dr}/stores", self.list_stores, ("GET",)),
            ("register", f"{dr}/stores/register", self.register, ("POST",)),
            ("store", store, self.get_store, ("GET",)),
            ("update_store", f"{store}/update", self.update_store, ("POST",)),
            ("unregister", f"{store}/unregister", self.unregister, ("POST",)),
            ("validate", f"{store}/validate", self.validate, ("POST",)),
        ]

    async def list_stores(self, call: Call) -> Reply:
        document = {"backupStores": stores.describe_all(self._engine)}
        return Reply(document, "stores.html", _register_form({}, []))

    async def register(self, call: Call) -> Reply:
        """From `settings` (JSON), or from the page's fields (`url` and option rows). What
        is wrong with the fields is shown on the page itself, each problem once."""
        if "url" not in call.params:
            spec = stores.spec_from_settings(call.require("storeName"), call.require("settings"))
            return await self._register(call, spec)
        if "settings" in call.params:
            raise ConfigError("Give settings (JSON) or the fields url and options, not both.")
        try:
            return await self._register(
                call, stores.spec_from_fields(call.require("storeName"), call.params)
            )
        except (ApiError, StrongroomError) as exc:
            if call.fmt != "html":
                raise
            messages = exc.messages if isinstance(exc, stores.FieldsError) else [str(exc)]
            return Reply(
                {"backupStores": stores.describe_all(self._engine)},
                "stores.html",
                _register_form(call.params, messages),
                status=exc.code if isinstance(exc, ApiError) else status_of(exc),
            )

    async def _register(self, call: Call, spec: StoreSpec) -> Reply:
        spec = await run(self._fence.check_new, spec, self._engine.registry)
        work = partial(stores.register, self._engine, spec, default=call.flag("isDefault"))
        if call.flag("async"):
            job = await run(
                self._engine.jobs.submit,
                "register",
                lambda _: work(),
                store=spec.name,
                operation_uri=call.uri,
            )
            return call.job_reply(job)
        await run(work)
        return Reply(SUCCESS, redirect=call.url("store", storeName=spec.name))

    async def get_store(self, call: Call) -> Reply:
        return Reply(stores.describe(self._engine, call.path("storeName")), "store.html")

    async def update_store(self, call: Call) -> Reply:
        name = call.path("storeName")
        self._fence.check_default()
        await run(stores.make_default, self._engine, name, call.require("settings"))
        return Reply(SUCCESS, redirect=call.url("store", storeName=name))

    async def unregister(self, call: Call) -> Reply:
        self._fence.check_existing(self._engine.config.get(call.path("storeName")))
        await run(stores.unregister, self._engine, call.path("storeName"))
        return Reply(SUCCESS, redirect=call.url("stores"))

    async def validate(self, call: Call) -> Reply:
        report = await run(self._engine.validate_store, call.path("storeName"))
        return Reply(report.to_dict(), "validation.html")


def store_path(dr: str) -> str:
    """The path of one store under the disaster-recovery root's path `dr`."""
    return f"{dr}/stores/{{storeName}}"


def _register_form(fields: Mapping[str, str], messages: list[str]) -> dict[str, Any]:
    """The stores page's register form: its option rows, the fields to fill in again after
    an error (never an option's value: it may be a secret typed by mistake), the errors."""
    kept = {
        key: value
        for key, value in fields.items()
        if key in ("storeName", "url", "isDefault", "compression")
        or re.fullmatch(r"option\d+Key", key)
    }
    return {
        "form": kept,
        "messages": messages,
        "option_rows": stores.OPTION_ROWS,
        "compressions": COMPRESSIONS,
    }
