"""An inner pytest session run in the background, told what to do through files (the fault suite's)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest


class Inner:
    """A session started with ``argv`` in ``cwd``; :meth:`wait_for` a file it writes, :meth:`finish` it."""

    def __init__(self, argv: Sequence[str], cwd: Path) -> None:
        self.process = subprocess.Popen(list(argv), cwd=cwd, text=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=os.environ.copy())

    def wait_for(self, path: Path, seconds: float = 240) -> str:
        """The text of ``path`` once the inner session wrote it; fails with its output if it ended first."""
        deadline = time.monotonic() + seconds
        while not path.exists():
            if self.process.poll() is not None:
                pytest.fail(f"the inner session ended before it wrote {path.name}:\n{self.process.communicate()[0]}")
            assert time.monotonic() < deadline, f"{path.name} never came"
            time.sleep(0.2)
        return path.read_text()

    def finish(self, timeout: float = 180) -> str:
        """Its whole output, once it ended."""
        return self.process.communicate(timeout=timeout)[0]


@contextlib.contextmanager
def inner_session(argv: Sequence[str], cwd: Path) -> Iterator[Inner]:
    """:class:`Inner` within the block; killed at its end if it still runs."""
    inner = Inner(argv, cwd)
    try:
        yield inner
    finally:
        if inner.process.poll() is None:
            inner.process.kill()
            inner.process.communicate()
