"""S3 backup stores for strongroom: `s3://bucket/prefix` (or `s3a://`), on s3fs.

This module only registers the schemes; the store itself (`strongroom_s3.store`) and
the AWS SDK it needs load when an `s3://` store is first opened, so every strongroom
command that does not touch S3 starts as fast and as small as without this plugin.
"""

from __future__ import annotations

from strongroom import BackendOptions, BackendRegistry, Store, StoreSpec, hookimpl

__all__ = ["OPTIONS", "SCHEMES", "strongroom_register_backends"]

SCHEMES = ("s3", "s3a")
#: What the store options carry. `profile` is none of these: it picks credentials (and
#: maybe an endpoint) from the server's AWS configuration, so only the operator sets it.
OPTIONS = BackendOptions(
    settings=("region", "max_attempts", "retry_mode", "concurrency"),
    endpoints=("endpoint_url",),
    secrets=("key", "secret", "token"),
)


def _open(spec: StoreSpec) -> Store:
    from .store import open_s3_store

    return open_s3_store(spec)


@hookimpl
def strongroom_register_backends(registry: BackendRegistry) -> None:
    for scheme in SCHEMES:
        registry.add(scheme, _open, options=OPTIONS)
