"""Azure Blob Storage stores for strongroom: `az://container/prefix` (also `abfs://`, `abfss://`).

Installing this distribution registers the schemes through the `strongroom` entry-point
group; nothing else changes. This module only registers them: the store
(`strongroom_azure.store`) and the Azure SDK load when an `az://` store is first opened,
so strongroom commands that never touch Azure pay nothing for the plugin. See README.md.
"""

from __future__ import annotations

from strongroom import BackendRegistry, Store, StoreSpec, hookimpl

__all__ = ["SCHEMES", "strongroom_register_backends"]

#: adlfs's protocols; strongroom's core names all three as belonging to this distribution.
SCHEMES = ("az", "abfs", "abfss")


def _open(spec: StoreSpec) -> Store:
    from .store import open_azure_store

    return open_azure_store(spec)


@hookimpl
def strongroom_register_backends(registry: BackendRegistry) -> None:
    for scheme in SCHEMES:
        registry.add(scheme, _open)
