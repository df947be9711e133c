"""Azure Blob Storage stores for strongroom: `az://container/prefix` (also `abfs://`, `abfss://`).

Installing this distribution registers the schemes through the `strongroom` entry-point
group; nothing else changes. See README.md for the options.
"""

from __future__ import annotations

from ._options import KNOWN_OPTIONS, AzureOptions
from ._store import SCHEMES, AzureStore, open_azure_store, strongroom_register_backends

__all__ = [
    "KNOWN_OPTIONS",
    "SCHEMES",
    "AzureOptions",
    "AzureStore",
    "open_azure_store",
    "strongroom_register_backends",
]
