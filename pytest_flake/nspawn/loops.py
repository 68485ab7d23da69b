"""Loop devices for containers, and leaving the host's ``/dev/loop*`` as they were found.

``portablectl attach`` of a ``.raw`` image in a container needs loop devices: the kernel's
``LOOP_CTL_GET_FREE`` hands out the lowest free one, and it must exist in the container's
``/dev``, so every host ``/dev/loopN`` is bound in. systemd 252 in the container then
removes (``LOOP_CTL_REMOVE``) each loop device it used, on the host too. This module keeps
the books: the first container of a session records the host's loop devices in a file of
the session (``loops.json``); the last container to stop puts them back as they were
(``LOOP_CTL_ADD`` what vanished, ``LOOP_CTL_REMOVE`` what was added and is free). A session
killed before that leaves the file behind, and the next session's sweep restores from it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from pathlib import Path

from .._host import locked, write_atomic

log = logging.getLogger(__name__)

LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
LOOP_CTL_GET_FREE = 0x4C82

DEV = Path("/dev")
SYS_BLOCK = Path("/sys/block")
SPARE = 4  # free loop devices each container start makes sure of
MIN_DEVICES = 8  # loop0..loop7 exist at least, as a fresh kernel makes them

_NAME = re.compile(r"loop(\d+)$")


def present(dev: Path = DEV) -> set[int]:
    """The numbers N of the ``/dev/loopN`` nodes that exist now."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for entry in dev.iterdir():
            match = _NAME.match(entry.name)
            if match:
                found.add(int(match.group(1)))
    return found


def busy(number: int, sys_block: Path = SYS_BLOCK) -> bool:
    """Whether ``loopN`` is bound to a file (such a device cannot be removed, nor is it free)."""
    return (sys_block / f"loop{number}" / "loop" / "backing_file").exists()


def unavailable(dev: Path = DEV) -> str | None:
    """Why loop devices cannot be handed to a container here, or None."""
    control = dev / "loop-control"
    if not control.exists():
        return f"{control} does not exist (modprobe loop)"
    if not os.access(control, os.R_OK | os.W_OK):
        return f"{control} is not writable (containers need root)"
    return None


def _control(request: int, number: int, dev: Path) -> None:
    fd = os.open(dev / "loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, number)
    finally:
        os.close(fd)


def add(number: int, dev: Path = DEV) -> None:
    """``LOOP_CTL_ADD``: create ``loopN`` (devtmpfs makes its node)."""
    _control(LOOP_CTL_ADD, number, dev)


def remove(number: int, dev: Path = DEV) -> None:
    """``LOOP_CTL_REMOVE``: remove a free ``loopN``; ``OSError`` (EBUSY) when it is in use."""
    _control(LOOP_CTL_REMOVE, number, dev)


def restore(baseline: set[int], added: set[int], dev: Path = DEV, sys_block: Path = SYS_BLOCK) -> list[str]:
    """Put ``/dev/loop*`` back to ``baseline``; returns what could not be (one line each).

    Numbers of the baseline that vanished are added again; numbers not in the baseline
    that are free are removed when this session ``added`` them or a container removed
    and the kernel re-created them (any loop device outside the baseline, in short,
    that nobody uses).
    """
    problems: list[str] = []
    now = present(dev)
    for number in sorted(baseline - now):
        try:
            add(number, dev)
        except OSError as exc:
            problems.append(f"could not add loop{number} back: {exc}")
    for number in sorted(present(dev) - baseline):
        if busy(number, sys_block):
            if number in added:
                problems.append(f"loop{number} was added for containers and is still in use")
            continue
        try:
            remove(number, dev)
        except OSError as exc:
            problems.append(f"could not remove loop{number}: {exc}")
    return problems


class LoopBook:
    """The loop devices of one session's containers, kept in ``<session dir>/nspawn/loops.json``."""

    def __init__(self, path: Path, dev: Path = DEV, sys_block: Path = SYS_BLOCK) -> None:
        self.path = path
        self.dev = dev
        self.sys_block = sys_block

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return locked(self.path.with_suffix(".lock"))

    def _read(self) -> dict[str, list[int]] | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return {"baseline": [int(n) for n in data.get("baseline", [])],
                "added": [int(n) for n in data.get("added", [])]}

    def _write(self, data: dict[str, list[int]]) -> None:
        write_atomic(self.path, json.dumps(data))

    def prepare(self, spare: int = SPARE) -> list[Path]:
        """Record the host's loop devices (first call), make sure ``spare`` are free, list all nodes.

        The numbers 0..highest all exist afterwards (a number a container removed is
        re-created with the same minor, so a node bound in earlier keeps working).
        """
        with self._locked():
            data = self._read()
            now = present(self.dev)
            if data is None:
                data = {"baseline": sorted(now), "added": []}
                self._write(data)  # written before any change: a killed session can be restored
            wanted = set(range(max([MIN_DEVICES - 1, *now]) + 1))
            free = [n for n in wanted if not busy(n, self.sys_block)]
            top = max(wanted)
            while len(free) < spare:
                top += 1
                wanted.add(top)
                free.append(top)
            missing = sorted(wanted - now)
            data["added"] = sorted(set(data["added"]) | (set(missing) - set(data["baseline"])))
            self._write(data)
            for number in missing:
                try:
                    add(number, self.dev)
                except OSError as exc:
                    if (self.dev / f"loop{number}").exists():
                        continue  # another process created it meanwhile
                    log.warning("pytest-flake: could not add loop%d: %s", number, exc)
            return [self.dev / f"loop{n}" for n in sorted(present(self.dev))]

    def restore(self) -> list[str]:
        """Put the host's loop devices back as recorded and forget the record (if all went back)."""
        with self._locked():
            data = self._read()
            if data is None:
                return []
            problems = restore(set(data["baseline"]), set(data["added"]), self.dev, self.sys_block)
            if not problems:
                self.path.unlink(missing_ok=True)
            for line in problems:
                log.warning("pytest-flake: %s", line)
            return problems
