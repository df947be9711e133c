"""The least work an encrypted backup can do: the baseline of the throughput benchmark.

Backup walks SOURCE (a file or a directory) and writes every file into one output file as
AES-256-GCM frames of at most 4 MiB; restore reverses it. No compression, deduplication, key
derivation or index, only the one fsync at the end that any durable backup needs, so the gap
between this loop and a real tool is that tool's own overhead.

Stream format: a sequence of frames ``kind (1 byte) | ciphertext length (4 bytes, big-endian) |
ciphertext``. The kind is authenticated as associated data and the nonce is a 96-bit counter that
both sides count, so a flipped, reordered, dropped or replayed frame fails to decrypt.
Kinds: ``P`` starts a file (plaintext: its path, '/'-separated, beginning with SOURCE's basename),
``D`` is a chunk of that file's data, ``E`` ends the stream (so truncation is detected).

Usage: minimal_loop.py backup KEY_FILE SOURCE ARCHIVE
       minimal_loop.py restore KEY_FILE ARCHIVE TARGET
KEY_FILE holds the 32 raw key bytes.
"""

import argparse
import os
import struct
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CHUNK = 4 * 1024 * 1024
FRAME_HEADER = struct.Struct(">cI")
PATH, DATA, END = b"P", b"D", b"E"


class Sealer:
    """Encrypts frames onto a stream with counter nonces."""

    def __init__(self, key: bytes, out: BinaryIO) -> None:
        self._aead = AESGCM(key)
        self._out = out
        self._counter = 0

    def write(self, kind: bytes, plaintext: bytes) -> None:
        nonce = self._counter.to_bytes(12, "big")
        self._counter += 1
        ciphertext = self._aead.encrypt(nonce, plaintext, kind)
        self._out.write(FRAME_HEADER.pack(kind, len(ciphertext)))
        self._out.write(ciphertext)


class Opener:
    """Reads and decrypts the frames a Sealer wrote, in order."""

    def __init__(self, key: bytes, src: BinaryIO) -> None:
        self._aead = AESGCM(key)
        self._src = src
        self._counter = 0

    def read(self) -> tuple[bytes, bytes]:
        header = self._src.read(FRAME_HEADER.size)
        if len(header) != FRAME_HEADER.size:
            raise ValueError("archive truncated: no end frame")
        kind, length = FRAME_HEADER.unpack(header)
        ciphertext = self._src.read(length)
        if len(ciphertext) != length:
            raise ValueError("archive truncated inside a frame")
        nonce = self._counter.to_bytes(12, "big")
        self._counter += 1
        return kind, self._aead.decrypt(nonce, ciphertext, kind)


def walk(source: Path) -> Iterator[tuple[Path, str]]:
    """Yields (file, archive path) in a stable order; archive paths start with source's name."""
    if not source.is_dir():
        yield source, source.name
        return
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        relative = Path(dirpath).relative_to(source.parent).as_posix()
        for name in sorted(filenames):
            yield Path(dirpath, name), f"{relative}/{name}"


def backup(key: bytes, source: Path, archive: Path) -> None:
    with archive.open("wb") as out:
        sealer = Sealer(key, out)
        for path, name in walk(source):
            sealer.write(PATH, name.encode())
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    sealer.write(DATA, chunk)
        sealer.write(END, b"")
        out.flush()
        os.fsync(out.fileno())  # a backup is not done until it is durable, for every tool


def safe_target(target: Path, name: str) -> Path:
    """Refuses archive paths that would land outside the target directory."""
    parts = PurePosixPath(name).parts
    if not parts or parts[0] == "/" or ".." in parts:
        raise ValueError(f"unsafe path in archive: {name!r}")
    return target.joinpath(*parts)


def restore(key: bytes, archive: Path, target: Path) -> None:
    current: BinaryIO | None = None
    try:
        with archive.open("rb") as src:
            opener = Opener(key, src)
            while True:
                kind, plaintext = opener.read()
                if kind == END:
                    return
                if kind == PATH:
                    if current is not None:
                        current.close()
                    path = safe_target(target, plaintext.decode())
                    path.parent.mkdir(parents=True, exist_ok=True)
                    current = path.open("wb")
                elif kind == DATA and current is not None:
                    current.write(plaintext)
                else:
                    raise ValueError(f"unexpected frame kind {kind!r}")
    finally:
        if current is not None:
            current.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["backup", "restore"])
    parser.add_argument("key_file", type=Path)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args()
    key = args.key_file.read_bytes()
    if args.mode == "backup":
        backup(key, args.src, args.dst)
    else:
        restore(key, args.src, args.dst)


if __name__ == "__main__":
    main()
