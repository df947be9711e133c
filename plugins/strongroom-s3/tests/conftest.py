"""Real S3 servers for the S3 backend's tests: moto's standalone server, and a fault proxy.

The session's server is `$STRONGROOM_TEST_S3_ENDPOINT` if set (CI starts one), else a
moto server started here on a free port. Tests that kill a server or need one that
checks credentials start their own. Credentials are dummies from the environment; the
real ~/.aws is never read.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import s3fs

import strongroom_s3
from strongroom import BackendRegistry, Engine, KdfParams, StoreSpec
from strongroom.plugins import build_registry, get_plugin_manager
from strongroom_s3.store import S3Store

ENDPOINT_ENV = "STRONGROOM_TEST_S3_ENDPOINT"
#: Argon2id at its cheapest: these tests are about the store.
FAST_KDF = KdfParams(memory_cost_kib=8 * 1024, iterations=1, lanes=1)
SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>FAULT</RequestId></Error>"
)
#: A fault rule: (method, path, attempt at this method and path, from 1) -> action or None.
#: Actions: "slowdown" answers 503 SlowDown; "drop" forwards, then hangs up without the
#: answer; "cut" hangs up without forwarding.
FaultRule = Callable[[str, str, int], str | None]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class MotoServer:
    """moto's standalone S3 server as a subprocess on 127.0.0.1."""

    def __init__(self, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {
            **os.environ,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            **env,
        }
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoServer:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self._process = subprocess.Popen(
            command, env=self._env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            with suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto's S3 server did not start on port {self.port}")

    def kill(self) -> None:
        """End the server at once, as a crash would: open connections are reset."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class FaultProxy:
    """A threaded HTTP proxy in front of an S3 server that logs requests and injects faults."""

    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        #: (method, path with query, headers) of every request, in order of arrival
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        #: (action, method, path) of every fault injected
        self.faults: list[tuple[str, str, str]] = []
        self.rule: FaultRule = lambda method, path, attempt: None
        #: Rewrites an answer's body: (method, path, body) -> body, as a hostile server would.
        self.rewrite: Callable[[str, str, bytes], bytes] = lambda method, path, body: body
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def decide(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        with self._lock:
            self.requests.append((method, path, headers))
            attempt = sum(1 for m, p, _ in self.requests if (m, p) == (method, path))
            action = self.rule(method, path, attempt)
            if action is not None:
                self.faults.append((action, method, path))
            return action

    def forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                connection.putheader(name, value)
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            connection.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


#: Headers about one hop of the connection, which the proxy does not pass on.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "expect"}


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            action = proxy.decide(self.command, self.path, dict(self.headers.items()))
            if action == "cut":
                self.close_connection = True
                return
            if action == "slowdown":
                self.answer(503, "Slow Down", [("Content-Type", "application/xml")], SLOWDOWN)
                return
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP]
            headers.append(("Content-Length", str(len(body))))
            status, reason, headers, payload = proxy.forward(self.command, self.path, headers, body)
            if action == "drop":
                self.close_connection = True
                return
            if action == "halfbody":  # the connection breaks as the body is sent
                self.close_connection = True
                self.answer(status, reason, headers, payload, cut=len(payload) // 2)
                return
            self.answer(status, reason, headers, proxy.rewrite(self.command, self.path, payload))

        def answer(
            self,
            status: int,
            reason: str,
            headers: list[tuple[str, str]],
            payload: bytes,
            cut: int | None = None,
        ) -> None:
            self.send_response_only(status, reason)
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            length = dict((k.lower(), v) for k, v in headers).get("content-length")
            if self.command == "HEAD" and length is not None:
                self.send_header("Content-Length", length)
            else:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload[:cut])

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = relay

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy AWS credentials, no AWS config files or instance metadata, a fresh STRONGROOM_HOME."""
    for variable in list(os.environ):
        if variable.startswith("AWS_"):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("STRONGROOM_HOME", str(tmp_path / "strongroom-home"))
    monkeypatch.delenv("STRONGROOM_CONFIG", raising=False)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    configured = os.environ.get(ENDPOINT_ENV)
    if configured:
        yield configured.rstrip("/")
        return
    server = MotoServer().start()
    yield server.url
    server.stop()


@pytest.fixture
def moto_server() -> Iterator[Callable[..., MotoServer]]:
    """Start a server of the test's own (port=..., or environment variables for moto)."""
    started: list[MotoServer] = []

    def start(port: int | None = None, **env: str) -> MotoServer:
        started.append(MotoServer(port, **env).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[str], FaultProxy]]:
    proxies: list[FaultProxy] = []

    def start(upstream: str) -> FaultProxy:
        proxies.append(FaultProxy(upstream))
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def auth_s3(moto_server: Callable[..., MotoServer]) -> dict[str, str]:
    """A server that checks credentials, with a bucket and a user who may use it.

    moto lets the first INITIAL_NO_AUTH_ACTION_COUNT requests through unchecked: enough
    to create the user, its policy, its access key and the bucket.
    """
    server = moto_server(INITIAL_NO_AUTH_ACTION_COUNT="4")
    iam = boto3.client("iam", endpoint_url=server.url)
    iam.create_user(UserName="backup")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(UserName="backup", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="backup")["AccessKey"]
    bucket = f"strongroom-{uuid.uuid4().hex[:20]}"
    boto3.client("s3", endpoint_url=server.url).create_bucket(Bucket=bucket)
    return {
        "endpoint": server.url,
        "bucket": bucket,
        "key": key["AccessKeyId"],
        "secret": key["SecretAccessKey"],
    }


@pytest.fixture
def new_bucket(s3_endpoint: str) -> Callable[..., str]:
    """Create a bucket with a fresh name (on the session's server unless told otherwise)."""

    def create(endpoint: str = s3_endpoint, name: str | None = None, **options: Any) -> str:
        name = name or f"strongroom-{uuid.uuid4().hex[:20]}"
        admin(endpoint).call_s3("create_bucket", Bucket=name, **options)
        return name

    return create


@pytest.fixture
def bucket(s3_endpoint: str, new_bucket: Callable[..., str]) -> Iterator[str]:
    """A fresh bucket on the session's server, emptied and removed afterwards."""
    name = new_bucket()
    yield name
    admin(s3_endpoint).rm(name, recursive=True)


@pytest.fixture
def s3_registry() -> BackendRegistry:
    """The backends of the core and of this plugin only, whatever else is installed."""
    manager = get_plugin_manager(autoload=False)
    manager.register(strongroom_s3)
    return build_registry(manager)


@pytest.fixture
def open_s3(s3_endpoint: str, s3_registry: BackendRegistry) -> Callable[..., S3Store]:
    """Open an S3 store the way the engine does: a StoreSpec through the plugin's hook."""

    def open_(bucket: str, endpoint: str = s3_endpoint, **options: Any) -> S3Store:
        spec = StoreSpec(
            "s3test", f"s3://{bucket}/strongroom", {"endpoint_url": endpoint, **options}
        )
        store = s3_registry.open(spec)
        assert isinstance(store, S3Store)
        return store

    return open_


@pytest.fixture
def make_engine() -> Callable[..., Engine]:
    def make(*stores: S3Store, chunk_size: int = 256 * 1024, **options: Any) -> Engine:
        return Engine(stores=stores, kdf=FAST_KDF, chunk_size=chunk_size, **options)

    return make


@pytest.fixture
def s3_admin(s3_endpoint: str) -> Callable[..., Any]:
    """Plain s3fs clients, to set up and inspect a server behind the store's back."""

    def client(endpoint: str = s3_endpoint) -> Any:
        return admin(endpoint)

    return client


def admin(endpoint: str) -> Any:
    return s3fs.S3FileSystem(
        endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True
    )
