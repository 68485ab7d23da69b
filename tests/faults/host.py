"""What the fault suite looks at on this host: its loop devices, and processes by their command line."""

from __future__ import annotations

import os
from pathlib import Path


def host_loops() -> list[str]:
    """The names of ``/dev/loop*`` (``loop-control`` among them), sorted."""
    return sorted(p.name for p in Path("/dev").iterdir() if p.name.startswith("loop"))


def processes_with(text: str) -> list[int]:
    """The pids (other than this process) whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found
