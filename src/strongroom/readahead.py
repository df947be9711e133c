"""Reading ahead of the archive writer, so a backup of many small files waits less on the disk.

The archive writer reads one file after another. From a cold cache each small file costs
disk round trips (its inode, then its data), one at a time, where the disk could serve many
at once. So a helper process (`prefetcher.py`, in an interpreter of its own: threads here
would wait for the GIL the writer holds) asks the kernel for the files ahead of the writer,
several at once, within WINDOW bytes of what the writer has written, which a thread here
sends it. 20,000 small files (500 MB), cold cache, until durable, 5 interleaved runs: 4.74 s
with one read-ahead thread in this process, 3.67 s with this helper (docs/benchmarks.md).

Nothing here changes what is archived: a file read ahead is read again by the writer, as it
is then; one the helper misses is simply not read ahead. Any failure (no Python to start,
the helper ending) ends the read-ahead, never the backup. The helper is stopped with the
context; it gets its sources on its standard input and of the environment only the loader's
and locale's variables (`helperprocess.helper_environment`), so neither the names backed up nor
any credential of the host's shows in its command line or environment.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from . import prefetcher
from .helperprocess import can_start_helpers, start_helper

__all__ = ["WINDOW", "ReadAhead"]

#: How far ahead of the writer the kernel is asked to read (bytes of files); also the most of
#: any one file asked for, since the kernel reads a large file ahead as it is read.
WINDOW = 64 * 1024 * 1024
#: How often the writer's position is sent (seconds).
_PAUSE = 0.005
#: How long the end of a backup waits for its killed helper (one stuck on a dead disk
#: is left for the interpreter to reap).
_REAP_TIMEOUT = 1.0
_log = logging.getLogger("strongroom.readahead")


class ReadAhead:
    """A helper process reading `sources` ahead while `written()` (the archive's size so
    far) grows; stopped when the context ends."""

    def __init__(
        self, sources: Sequence[Path], written: Callable[[], int], window: int = WINDOW
    ) -> None:
        self._sources, self._written, self._window = sources, written, window
        self._stop = threading.Event()
        self._helper: subprocess.Popen[bytes] | None = None
        self._pipe = -1
        self._thread = threading.Thread(target=self._report, name="strongroom-readahead")

    def __enter__(self) -> ReadAhead:
        if self._sources and can_start_helpers(prefetcher.__file__):
            try:
                self._start()
            except Exception:  # advisory only: the writer reads every file itself anyway
                _log.debug("Reading ahead did not start", exc_info=True)
                self._stop_helper()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop_helper()

    def _start(self) -> None:
        pipe, self._pipe = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._pipe, False)  # a helper that reads no more never blocks us
        try:
            self._helper = start_helper(
                prefetcher.__file__,
                [str(pipe), str(self._window)],
                pass_fds=(pipe,),
                stdin=subprocess.PIPE,
            )
        finally:
            os.close(pipe)
        assert self._helper.stdin is not None
        with self._helper.stdin as names:  # read whole as the helper starts
            names.write(b"".join(os.fsencode(source) + b"\0" for source in self._sources))
        self._thread.start()

    def _stop_helper(self) -> None:
        """Stop the reporting thread and the helper, whichever of them started."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._pipe >= 0:
            os.close(self._pipe)
            self._pipe = -1
        if self._helper is not None:
            self._helper.kill()  # a walk stuck on a dead mount must not hold the backup
            try:
                self._helper.wait(_REAP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _log.debug("The read-ahead helper did not end in time")

    def _report(self) -> None:
        """Send the writer's position each time it has grown, until the context ends."""
        sent = 0
        while not self._stop.wait(_PAUSE):
            position = self._written()
            if position > sent:
                try:
                    os.write(self._pipe, prefetcher.POSITION.pack(position))
                except BlockingIOError:
                    continue
                except OSError:  # the helper ended
                    return
                sent = position
