"""The options of an az:// store, named as Azure users know them, and the client they build.

Authentication is exactly one of: `account_name` + `account_key` (shared key),
`account_name` + `sas_token`, a `connection_string`, or, when no secret is given,
`account_name` alone with `DefaultAzureCredential` (managed or workload identity, an
`AZURE_CLIENT_*` service principal, `az login`). Secrets must be written in the
configuration as `{ env = "VARIABLE" }` references (the core refuses plain text, as
`OPTIONS` declares them secrets) and are resolved before the store is opened.

A store whose options name no account and no secret takes them from the environment
adlfs and the az CLI read (ENVIRONMENT), whenever it is opened: so `az://container/prefix`
works in any shell where `az storage blob list` does, and nothing secret is configured.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.identity.aio import DefaultAzureCredential
from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry

from strongroom import ConfigError, StoreSpec

from . import OPTIONS

__all__ = ["KNOWN_OPTIONS", "AzureOptions", "Credential"]

#: Every object strongroom writes (a sealed chunk of at most 64 MiB + 17 bytes, a manifest of
#: at most 1 MiB) goes up in one Put Blob request: a blob is then either absent or complete,
#: If-None-Match is checked by the one request that creates it, and no uncommitted blocks are
#: ever left behind. The SDK's default (64 MiB) is just too small for the largest chunk.
SINGLE_PUT_LIMIT = 128 * 1024 * 1024

TEXT_OPTIONS = ("account_name", *OPTIONS.endpoints, *OPTIONS.secrets)
#: Whole-number options: name -> (smallest allowed, default). Times are in seconds.
NUMBER_OPTIONS = {
    "concurrency": (1, 8),
    "retry_total": (0, 5),
    "initial_backoff": (0, 1),
    "increment_base": (0, 2),
    "connection_timeout": (1, 20),
    "read_timeout": (1, 60),
}
KNOWN_OPTIONS = sorted([*TEXT_OPTIONS, *NUMBER_OPTIONS])
#: The variables adlfs (…_ACCOUNT_NAME, …_ACCOUNT_KEY) and the az CLI (…_ACCOUNT, …_KEY)
#: read, by the option each stands for, first name first.
ENVIRONMENT = {
    "connection_string": ("AZURE_STORAGE_CONNECTION_STRING",),
    "account_name": ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT"),
    "account_key": ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_KEY"),
    "sas_token": ("AZURE_STORAGE_SAS_TOKEN",),
}

#: Azure's rule: 3-63 lowercase letters, digits and single hyphens, starting and ending alnum.
CONTAINER_NAME = re.compile(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]")
#: Azure's rule for storage accounts. The name becomes the endpoint's host, so anything
#: else (`evil.example/#`) would send requests, and a credential's token, elsewhere.
ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")

Credential = AzureNamedKeyCredential | AzureSasCredential | DefaultAzureCredential


@dataclass(frozen=True, slots=True)
class AzureOptions:
    """A store's URL and options, checked; secrets are kept out of repr."""

    container: str
    prefix: str
    account_name: str | None = None
    account_url: str | None = None
    account_key: str | None = field(default=None, repr=False)
    sas_token: str | None = field(default=None, repr=False)
    connection_string: str | None = field(default=None, repr=False)
    concurrency: int = NUMBER_OPTIONS["concurrency"][1]
    retry_total: int = NUMBER_OPTIONS["retry_total"][1]
    initial_backoff: int = NUMBER_OPTIONS["initial_backoff"][1]
    increment_base: int = NUMBER_OPTIONS["increment_base"][1]
    connection_timeout: int = NUMBER_OPTIONS["connection_timeout"][1]
    read_timeout: int = NUMBER_OPTIONS["read_timeout"][1]

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> AzureOptions:
        """Check `az://container/prefix` and the options; a ConfigError says what to fix."""
        parts = urlsplit(spec.url)
        if parts.query or parts.fragment or not CONTAINER_NAME.fullmatch(parts.netloc):
            raise ConfigError(
                f"Store {spec.name!r}: write the URL as az://CONTAINER/PREFIX, where CONTAINER "
                "is an Azure container name (3-63 lowercase letters, digits and hyphens); "
                "the account goes in the account_name or connection_string option."
            )
        unknown = sorted(set(spec.options) - set(KNOWN_OPTIONS))
        if unknown:
            raise ConfigError(
                f"Store {spec.name!r}: unknown option(s) {', '.join(unknown)} for Azure stores; "
                f"the known options are {', '.join(KNOWN_OPTIONS)}."
            )
        values: dict[str, Any] = {
            name: _text(spec, name) if name in TEXT_OPTIONS else _number(spec, name)
            for name in spec.options
        }
        if not set(ENVIRONMENT) & set(spec.options):
            values |= _from_environment()
        options = cls(parts.netloc, parts.path.strip("/"), **values)
        if options.account_name is not None and not ACCOUNT_NAME.fullmatch(options.account_name):
            raise ConfigError(
                f"Store {spec.name!r}: account_name is an Azure storage account name, "
                "3-24 lowercase letters and digits."
            )
        options._check_authentication(spec.name)
        return options

    def _check_authentication(self, store: str) -> None:
        if self.connection_string is None and self.account_name is None:
            raise ConfigError(
                f"Store {store!r}: set account_name (with account_key, sas_token, or neither to "
                "use DefaultAzureCredential), or set connection_string; or export "
                "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME (with "
                "AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN), as for adlfs and az."
            )
        if self.connection_string is not None:
            others = ("account_name", "account_url", "account_key", "sas_token")
            given = [name for name in others if getattr(self, name) is not None]
            if given:
                raise ConfigError(
                    f"Store {store!r}: connection_string already names the account, endpoint and "
                    f"secret; remove {', '.join(given)} or the connection string."
                )
            return
        if self.account_key is not None and self.sas_token is not None:
            raise ConfigError(f"Store {store!r}: give account_key or sas_token, not both.")
        if self.account_url is None:
            return
        url = urlsplit(self.account_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigError(
                f"Store {store!r}: account_url is the blob service endpoint, for example "
                "https://ACCOUNT.blob.core.windows.net or http://127.0.0.1:10000/devstoreaccount1."
            )
        if url.scheme == "http" and self.account_key is None and self.sas_token is None:
            raise ConfigError(
                f"Store {store!r}: DefaultAzureCredential only works over https; for an "
                "emulator on http set account_key, sas_token or connection_string."
            )

    def connect(self) -> tuple[BlobServiceClient, Credential | None]:
        """The async service client, with strongroom's retries, timeouts and upload size."""
        retries = self.retry_total
        settings: dict[str, Any] = {
            # Waits initial_backoff + increment_base**n seconds (n = 1, 2, ...), give or take
            # initial_backoff, before retry n of a timeout, a dropped connection, 408 or 5xx.
            "retry_policy": ExponentialRetry(
                initial_backoff=self.initial_backoff,
                increment_base=self.increment_base,
                random_jitter_range=self.initial_backoff,
                retry_total=retries,
                retry_connect=retries,
                retry_read=retries,
                retry_status=retries,
            ),
            "connection_timeout": self.connection_timeout,
            "read_timeout": self.read_timeout,
            "max_single_put_size": SINGLE_PUT_LIMIT,
        }
        if self.connection_string is not None:
            client = BlobServiceClient.from_connection_string(self.connection_string, **settings)
            return client, None
        account = str(self.account_name)  # set whenever connection_string is not
        credential: Credential
        if self.account_key is not None:
            credential = AzureNamedKeyCredential(account, self.account_key)
        elif self.sas_token is not None:
            credential = AzureSasCredential(self.sas_token.lstrip("?"))
        else:
            credential = DefaultAzureCredential()
        url = self.account_url or f"https://{account}.blob.core.windows.net"
        return BlobServiceClient(url, credential=credential, **settings), credential


def _from_environment() -> dict[str, str]:
    """Authentication as adlfs and the az CLI find it: a connection string, else an account
    name with its key or a SAS token, else the name alone (DefaultAzureCredential)."""
    found = {
        option: next((os.environ[name] for name in names if os.environ.get(name)), None)
        for option, names in ENVIRONMENT.items()
    }
    connection_string, account_name = found["connection_string"], found["account_name"]
    if connection_string:
        return {"connection_string": connection_string}
    if not account_name:
        return {}
    chosen = {"account_name": account_name}
    for secret in ("account_key", "sas_token"):
        value = found[secret]
        if value:
            chosen[secret] = value
            break
    return chosen


def _text(spec: StoreSpec, name: str) -> str:
    value = spec.options[name]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"Store {spec.name!r}: option {name!r} must be non-empty text.")
    return value


def _number(spec: StoreSpec, name: str) -> int:
    """A whole number, from TOML or from the CLI's `--option name=8` text."""
    value = spec.options[name]
    low = NUMBER_OPTIONS[name][0]
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"Store {spec.name!r}: option {name!r} must be a whole number >= {low}.")
    return value
