"""S3 backup stores for strongroom: `s3://bucket/prefix` (or `s3a://`), on s3fs.

This module only registers the schemes; the store itself (`strongroom_s3.store`) and
the AWS SDK it needs load when an `s3://` store is first opened, so every strongroom
command that does not touch S3 starts as fast and as small as without this plugin.
"""

from __future__ import annotations

from strongroom import BackendRegistry, Store, StoreSpec, hookimpl

__all__ = ["SCHEMES", "strongroom_register_backends"]

SCHEMES = ("s3", "s3a")


def _open(spec: StoreSpec) -> Store:
    from .store import open_s3_store

    return open_s3_store(spec)


@hookimpl
def strongroom_register_backends(registry: BackendRegistry) -> None:
    for scheme in SCHEMES:
        registry.add(scheme, _open)
