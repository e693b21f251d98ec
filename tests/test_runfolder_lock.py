"""runfolder.hold: one process at a time trains or exports a run folder; a killed holder's folder is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dreamfusion.runfolder import LOCK, RunFolderBusy, hold

ROOT = Path(__file__).resolve().parents[1]


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with hold(tmp_path, "training"):
        with pytest.raises(RunFolderBusy) as refused:
            with hold(tmp_path, "exporting"):
                pass
        message = str(refused.value)
        assert message.startswith(f"run folder '{tmp_path}' is in use by process {os.getpid()} (training: ")
        assert "\n" not in message
    with hold(tmp_path, "exporting"):  # released at the end of the first hold
        assert (tmp_path / LOCK).read_text().startswith(f"process {os.getpid()} (exporting: ")


def test_a_killed_holders_folder_is_taken_over(tmp_path):
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from dreamfusion.runfolder import hold\n"
            "with hold(sys.argv[2], 'training'):\n    print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=f"in use by process {holder.pid} "):
            with hold(tmp_path, "training"):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
    deadline = time.time() + 10  # the OS drops a dead process's lock at once; allow for a slow reaper
    while True:
        try:
            with hold(tmp_path, "training"):
                break
        except RunFolderBusy:
            assert time.time() < deadline, "the killed holder's lock was never released"
            time.sleep(0.05)
