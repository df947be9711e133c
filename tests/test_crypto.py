"""Key derivation from several threads at once (issue #14), and the comparisons and
digests that come from cryptography rather than Python's hmac and hashlib.

With cryptography 50 on OpenSSL 4, Argon2id derivations with more than one lane hang when
two run at once, and every later one fails with MemoryError, so each test runs its threads
in a subprocess with a timeout: a hang fails the test instead of wedging the test run.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from cryptography.hazmat.backends.openssl import backend

from strongroom.crypto import KdfParams, Passcode, derive_kek, same_bytes, sha256
from tests.conftest import PASSCODE

#: Lanes as the defaults have them (the hang needs more than one), at the cheapest memory.
PARAMS = {"memory_cost_kib": 8 * 1024, "iterations": 1, "lanes": 4}
SALT = bytes(range(16))

#: Runs `rounds` rounds of `threads` threads that derive at the same moment, each round
#: waiting up to 5 s for its threads, and stops after a round in which one hangs or fails.
#: Prints each round's keys (hex) and errors.
CONCURRENT_DERIVATIONS = """
import json, os, sys, threading, time
args = json.loads(sys.argv[1])
salt = bytes.fromhex(args["salt"])
if args["through_strongroom"]:
    from strongroom.crypto import KdfParams, Passcode, derive_kek
    def derive():
        return derive_kek(Passcode(args["passcode"]), salt, KdfParams(**args["params"]))
else:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
    def derive():
        params = args["params"]
        kdf = Argon2id(salt=salt, length=32, iterations=params["iterations"],
                       lanes=params["lanes"], memory_cost=params["memory_cost_kib"])
        return kdf.derive(args["passcode"].encode())
def one_round():
    start = threading.Barrier(args["threads"])
    outcome = {"keys": [], "errors": []}
    def run():
        start.wait()
        try:
            outcome["keys"].append(derive().hex())
        except Exception as exc:
            outcome["errors"].append(repr(exc))
    threads = [threading.Thread(target=run, daemon=True) for _ in range(args["threads"])]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    for thread in threads:
        thread.join(max(0, deadline - time.monotonic()))
    return outcome
rounds = []
while len(rounds) < args["rounds"] and all(len(r["keys"]) == args["threads"] for r in rounds):
    rounds.append(one_round())
print(json.dumps(rounds), flush=True)
os._exit(0)  # without waiting for hung threads
"""


def _derive_concurrently(
    threads: int, rounds: int, *, through_strongroom: bool
) -> list[dict[str, list[str]]]:
    args = {
        "threads": threads,
        "rounds": rounds,
        "through_strongroom": through_strongroom,
        "params": PARAMS,
        "salt": SALT.hex(),
        "passcode": PASSCODE,
    }
    result = subprocess.run(
        [sys.executable, "-c", CONCURRENT_DERIVATIONS, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    outcome: list[dict[str, list[str]]] = json.loads(result.stdout)
    return outcome


def _expected_key() -> str:
    return derive_kek(Passcode(PASSCODE), SALT, KdfParams(**PARAMS)).hex()


def test_derive_kek_from_eight_threads_at_once() -> None:
    """Every derivation finishes, with the key a lone derivation gives, round after round."""
    success = {"keys": [_expected_key()] * 8, "errors": []}
    assert _derive_concurrently(8, 3, through_strongroom=True) == [success] * 3


@pytest.mark.skipif(
    backend.openssl_version_number() < 0x40000000,
    reason="the concurrent Argon2id hang was seen with OpenSSL 4",
)
def test_cryptography_still_cannot_derive_with_argon2id_concurrently() -> None:
    """Records the library's behaviour that the lock in crypto.py works around.

    With cryptography 50.0.2 on OpenSSL 4.0.3, two threads deriving at once mostly both
    hang; sometimes one finishes and the other raises MemoryError ("Not enough memory to
    derive key"), as does every derivation after a hang; now and then both succeed. So
    the test tries up to ten rounds. When an upgrade makes it fail, concurrent
    derivations work again.
    """
    success = {"keys": [_expected_key()] * 2, "errors": []}
    rounds = _derive_concurrently(2, 10, through_strongroom=False)
    assert rounds != [success] * 10, (
        "cryptography's concurrent Argon2id now works; the lock in crypto.py may be relaxed"
    )


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (b"", b"", True),
        (b"a mac", b"a mac", True),
        (b"a mac", b"a mad", False),
        (b"a mac", b"a ma", False),
        (b"", b"\0", False),
    ],
)
def test_same_bytes_is_equality(a: bytes, b: bytes, equal: bool) -> None:
    assert same_bytes(a, b) is equal


def test_sha256_is_sha256() -> None:
    assert sha256(b"strongroom") == hashlib.sha256(b"strongroom").digest()


def test_a_command_loads_one_openssl() -> None:
    """Python's hmac and hashlib load the system's OpenSSL beside the one cryptography
    brings: about 20 ms of every command's start with a cold page cache."""
    code = "import sys, strongroom.cli; print(sorted({'_hashlib', 'hmac'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (loaded.returncode, loaded.stdout.strip()) == (0, "[]"), loaded.stderr
