"""Helper processes start apart from the terminal's signals."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from strongroom.helperprocess import start_helper


def test_ctrl_c_at_a_terminal_reaches_the_main_process_but_not_its_helpers(
    tmp_path: Path,
) -> None:
    """A terminal sends Ctrl-C's SIGINT to its foreground process group; a helper in
    that group would die of it mid-batch, whatever the main process decides."""
    program = tmp_path / "helper.py"
    program.write_text("import os, sys\nopen(sys.argv[1], 'w').write(str(os.getpgrp()))\n")
    helper = start_helper(str(program), [str(tmp_path / "group")], stdin=subprocess.DEVNULL)
    assert helper.wait() == 0
    assert int((tmp_path / "group").read_text()) != os.getpgrp()
