"""Reading ahead of the archive writer, so a backup of many small files waits less on the disk.

The archive writer reads one file after another. From a cold cache each small file costs
disk round trips (its inode, then its data), one at a time, where the disk could serve many
at once. So a helper process (`prefetcher.py`, in an interpreter of its own: threads here
would wait for the GIL the writer holds) asks the kernel for the files ahead of the writer,
several at once, within WINDOW bytes of what the writer has written, which a thread here
sends it. 20,000 small files (500 MB), cold cache, until durable, 4 interleaved runs: 3.14 s
with one read-ahead thread in this process, 2.07 s with a helper of 8 (docs/benchmarks.md).

Nothing here changes what is archived: a file read ahead is read again by the writer, as it
is then; one the helper misses is simply not read ahead. Any failure (no Python to start,
the helper ending) ends the read-ahead, never the backup; the helper is stopped with the
context, and gets none of strongroom's settings.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from . import prefetcher
from .filewrite import can_start_helpers, helper_environment

__all__ = ["WINDOW", "ReadAhead"]

#: How far ahead of the writer the kernel is asked to read (bytes of files); also the most of
#: any one file asked for, since the kernel reads a large file ahead as it is read.
WINDOW = 64 * 1024 * 1024
#: How often the writer's position is sent (seconds).
_PAUSE = 0.005
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
        if can_start_helpers(prefetcher.__file__):
            try:
                self._start()
            except OSError:  # advisory only: the writer reads every file itself anyway
                _log.debug("Reading ahead did not start", exc_info=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._helper is None:
            return
        self._stop.set()
        self._thread.join()
        os.close(self._pipe)
        self._helper.kill()  # a walk stuck on a dead mount must not hold the backup
        self._helper.wait()

    def _start(self) -> None:
        pipe, self._pipe = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._pipe, False)  # a helper that reads no more never blocks us
        try:
            program = [sys.executable, "-I", "-S", prefetcher.__file__]
            sources = [os.fsencode(source) for source in self._sources]
            self._helper = subprocess.Popen(
                [*program, str(pipe), str(self._window), *sources],
                pass_fds=(pipe,),
                stdin=subprocess.DEVNULL,
                env=helper_environment(),
            )
        except BaseException:
            os.close(self._pipe)
            raise
        finally:
            os.close(pipe)
        self._thread.start()

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
