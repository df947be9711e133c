"""Real Azurite for the Azure plugin's tests: one server per session, a fresh container per test.

The session server is `azurite-blob` on a free port, unless
STRONGROOM_TEST_AZURITE_BLOB_ENDPOINT names one that is already running (CI starts its own).
Tests that kill the server start a private one with `azurite_server`. `fault_proxy` puts a
small HTTP relay in front of the server that can answer with injected faults.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from azure.storage.blob import BlobServiceClient

from strongroom import Engine, KdfParams, StoreSpec
from strongroom_azure._options import ENVIRONMENT
from strongroom_azure.store import AzureStore, open_azure_store

ENDPOINT_ENV = "STRONGROOM_TEST_AZURITE_BLOB_ENDPOINT"
#: Azurite's well-known development account and key (published in Azurite's README).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
#: Argon2id at its cheapest: these tests are about the store, not the KDF.
FAST_KDF = KdfParams(memory_cost_kib=8 * 1024, iterations=1, lanes=1)


@dataclass(frozen=True)
class Account:
    """Where a blob service is and how to sign in to it."""

    endpoint: str
    name: str = DEV_ACCOUNT
    key: str = DEV_KEY

    def options(self, **extra: str | int) -> dict[str, str | int]:
        """Store options for this account, with shared-key authentication."""
        base: dict[str, str | int] = {
            "account_name": self.name,
            "account_key": self.key,
            "account_url": self.endpoint,
        }
        return base | extra

    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.name};AccountKey={self.key};"
            f"BlobEndpoint={self.endpoint};"
        )

    def client(self) -> BlobServiceClient:
        return BlobServiceClient.from_connection_string(self.connection_string())


class AzuriteServer:
    """An azurite-blob process on a fixed port and data directory, which a test may restart."""

    def __init__(self, location: Path) -> None:
        self.location = location
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def account(self) -> Account:
        return Account(f"http://127.0.0.1:{self.port}/{DEV_ACCOUNT}")

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("azurite-blob is running already")  # its port would answer
        log = (self.location / "azurite.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(_azurite_binary()),
                *("--blobHost", "127.0.0.1", "--blobPort", str(self.port)),
                *("--location", str(self.location)),
                *("--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    log_text = (self.location / "azurite.log").read_text(errors="replace")
                    raise RuntimeError(f"azurite-blob did not start:\n{log_text}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Shut down gracefully: Azurite saves its metadata (it autosaves only every 5 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None

    def kill(self) -> None:
        """SIGKILL, like a crash: open connections drop and nothing is flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def account(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Account]:
    """The session's blob service: the CI's Azurite, or one started here."""
    endpoint = os.environ.get(ENDPOINT_ENV)
    if endpoint:
        yield Account(endpoint.rstrip("/"))
        return
    server = AzuriteServer(tmp_path_factory.mktemp("azurite"))
    server.start()
    try:
        yield server.account
    finally:
        server.stop()


@pytest.fixture
def azurite_server(tmp_path: Path) -> Iterator[AzuriteServer]:
    """A private Azurite (not yet started) that the test may kill and restart."""
    (tmp_path / "azurite").mkdir()
    server = AzuriteServer(tmp_path / "azurite")
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def container(account: Account) -> Iterator[str]:
    """A fresh, empty container, deleted afterwards."""
    name = f"t{uuid.uuid4().hex[:20]}"
    with account.client() as client:
        client.create_container(name)
        yield name
        client.delete_container(name)


@pytest.fixture
def make_store(account: Account, container: str) -> Callable[..., AzureStore]:
    """Opens a store on the test's container through the plugin's factory, as a config would."""

    def make(name: str = "azure", url: str | None = None, **options: str | int) -> AzureStore:
        url = url or f"az://{container}/strongroom"
        return open_azure_store(StoreSpec(name, url, account.options(**options)))

    return make


@pytest.fixture
def store(make_store: Callable[..., AzureStore]) -> AzureStore:
    return make_store()


@pytest.fixture
def make_engine() -> Callable[..., Engine]:
    def make(store: AzureStore, chunk_size: int = 4 * 1024 * 1024) -> Engine:
        return Engine(stores=[store], kdf=FAST_KDF, chunk_size=chunk_size)

    return make


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines read no one's real configuration; stores come from the tests."""
    monkeypatch.setenv("STRONGROOM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STRONGROOM_CONFIG", raising=False)
    monkeypatch.delenv("STRONGROOM_PASSCODE", raising=False)
    for names in ENVIRONMENT.values():  # the developer's own Azure account stays out
        for name in names:
            monkeypatch.delenv(name, raising=False)


# -- the fault-injecting relay -------------------------------------------------------------

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "upgrade"}
SERVER_BUSY = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
    b"<Message>The server is busy.\nRequestId:00000000-0000-0000-0000-000000000000\n"
    b"Time:2026-01-01T00:00:00.0000000Z</Message></Error>"
)


class FaultProxy(ThreadingHTTPServer):
    """Relays HTTP to the blob service, injecting faults, and counts what it did.

    `busy_puts = N` answers the next N PUT requests with Azure's 503 ServerBusy error,
    without passing them on. `cut_puts = N` passes only the first half of the next N PUT
    bodies on and then hangs up on both sides. `drop_answer_to = "manifests/"` passes the
    first PUT whose path contains that text on, then hangs up instead of answering.
    `cut_gets = N` answers the next N GET requests with their whole Content-Length but only
    half their body, then hangs up.
    """

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _RelayHandler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}{parts.path}"
        self.busy_puts = 0
        self.cut_puts = 0
        self.drop_answer_to: str | None = None
        self.cut_gets = 0
        self.counts: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []
        #: Rewrites an answer's body: (method, path, body) -> body, as a hostile server would.
        self.rewrite: Callable[[str, str, bytes], bytes] = lambda method, path, body: body
        #: Body bytes the proxy answered to GET requests, by path (query left off).
        self.read_bytes: Counter[str] = Counter()
        self._lock = threading.Lock()

    def fault_for(self, method: str, path: str) -> str:
        with self._lock:
            self.counts[method] += 1
            self.requests.append((method, path))
            if method == "PUT" and self.busy_puts > 0:
                self.busy_puts -= 1
                self.counts["busy"] += 1
                return "busy"
            if method == "PUT" and self.cut_puts > 0:
                self.cut_puts -= 1
                self.counts["cut"] += 1
                return "cut"
            if method == "GET" and self.cut_gets > 0:
                self.cut_gets -= 1
                self.counts["cut"] += 1
                return "halfbody"
            if method == "PUT" and self.drop_answer_to and self.drop_answer_to in path:
                self.drop_answer_to = None
                self.counts["dropped"] += 1
                return "drop"
            return "relay"

    def note_answer(self, method: str, path: str, size: int) -> None:
        if method == "GET":
            with self._lock:
                self.read_bytes[path.partition("?")[0]] += size


class _RelayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def do_relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = self.server.fault_for(self.command, self.path)
        if fault == "busy":
            headers = {"Content-Type": "application/xml", "x-ms-error-code": "ServerBusy"}
            self._answer(503, "The server is busy.", headers, SERVER_BUSY)
            return
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        if fault == "cut":
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():  # Content-Length promises the whole body
                upstream.putheader(name, value)
            upstream.endheaders(body[: len(body) // 2])
            upstream.close()
            self.close_connection = True
            return
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        if fault == "drop":
            self.close_connection = True  # the blob is written; its answer never arrives
            return
        self.server.note_answer(self.command, self.path, len(data))
        data = self.server.rewrite(self.command, self.path, data)
        kept = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
        if self.command == "HEAD":
            kept["Content-Length"] = response.getheader("Content-Length") or "0"
        if fault == "halfbody":
            kept = {k: v for k, v in kept.items() if k.lower() != "content-length"}
            kept["Content-Length"] = str(len(data))  # promised whole, sent half
            self.close_connection = True
            self._answer(response.status, response.reason, kept, data[: len(data) // 2])
            return
        self._answer(response.status, response.reason, kept, data)

    do_GET = do_PUT = do_DELETE = do_HEAD = do_POST = do_relay

    def _answer(self, status: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status, reason)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the counts say what happened."""


@pytest.fixture
def fault_proxy(account: Account) -> Iterator[FaultProxy]:
    proxy = FaultProxy(account.endpoint)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


def _azurite_binary() -> Path:
    candidate = Path(sys.prefix) / "node" / "node_modules" / ".bin" / "azurite-blob"
    found = candidate if candidate.exists() else shutil.which("azurite-blob")
    if not found:
        raise RuntimeError(
            "azurite-blob was not found: 'make test' installs it into .venv/node, or set "
            f"{ENDPOINT_ENV} to a running Azurite blob endpoint."
        )
    return Path(found)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
