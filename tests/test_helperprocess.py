"""Helper processes stay in the main process's process group."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from strongroom.helperprocess import start_helper


def test_a_helper_stays_in_the_process_group_of_the_process_that_waits_for_it(
    tmp_path: Path,
) -> None:
    """In a group of its own, a helper writing to a terminal set to `tostop` (a traceback)
    is stopped by SIGTTOU for good, and the main process waits for it forever."""
    program = tmp_path / "helper.py"
    program.write_text("import os, sys\nopen(sys.argv[1], 'w').write(str(os.getpgrp()))\n")
    helper = start_helper(str(program), [str(tmp_path / "group")], stdin=subprocess.DEVNULL)
    assert helper.wait() == 0
    assert int((tmp_path / "group").read_text()) == os.getpgrp()
