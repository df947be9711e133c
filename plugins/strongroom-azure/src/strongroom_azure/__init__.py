"""Azure Blob Storage stores for strongroom: `az://container/prefix` (also `abfs://`, `abfss://`).

Installing this distribution registers the schemes through the `strongroom` entry-point
group; nothing else changes. This module only registers them: the store
(`strongroom_azure.store`) and the Azure SDK load when an `az://` store is first opened,
so strongroom commands that never touch Azure pay nothing for the plugin. See README.md.
"""

from __future__ import annotations

from strongroom import BackendOptions, BackendRegistry, Store, StoreSpec, hookimpl

__all__ = ["OPTIONS", "SCHEMES", "strongroom_register_backends"]

#: adlfs's protocols; strongroom's core names all three as belonging to this distribution.
SCHEMES = ("az", "abfs", "abfss")
#: What the store options carry (the options themselves: `_options.py`).
OPTIONS = BackendOptions(
    settings=(
        "account_name",
        "concurrency",
        "retry_total",
        "initial_backoff",
        "increment_base",
        "connection_timeout",
        "read_timeout",
    ),
    endpoints=("account_url",),
    secrets=("account_key", "sas_token", "connection_string"),
)


def _open(spec: StoreSpec) -> Store:
    from .store import open_azure_store

    return open_azure_store(spec)


@hookimpl
def strongroom_register_backends(registry: BackendRegistry) -> None:
    for scheme in SCHEMES:
        registry.add(scheme, _open, options=OPTIONS)
