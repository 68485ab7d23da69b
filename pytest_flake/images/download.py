"""Downloads into the cache: atomic, checksummed, with their progress handed to whoever shows it.

The store never writes to the terminal itself. A caller that has one (the plugin: pytest's terminal
writer, with capture suspended) passes a :data:`ProgressCallback`; without one, progress goes to the
log, a line per 10%.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import VMError
from .cache import MiB, need_space

log = logging.getLogger(__name__)

BAR_WIDTH = 25


@dataclass(frozen=True)
class Progress:
    """How far a download is: ``done`` of ``total`` bytes; ``finished`` once it ended (done or failed)."""

    what: str
    done: int
    total: int
    finished: bool = False

    @property
    def percent(self) -> int:
        return min(100, self.done * 100 // self.total) if self.total else 0

    def bar(self) -> str:
        """``downloading X: [######                   ]  24% of 512 MiB``"""
        return (f"{self.what}: [{'#' * (self.percent * BAR_WIDTH // 100):<{BAR_WIDTH}}] {self.percent:3d}% "
                f"of {self.total / MiB:.0f} MiB")


ProgressCallback = Callable[[Progress], None]


def log_progress(progress: Progress) -> None:
    """The progress of a download as log lines: one per 10% (the default, without a terminal)."""
    if not progress.finished:
        log.info("%s: %d%% of %.0f MiB", progress.what, progress.percent, progress.total / MiB)


class _Reporter:
    """Hands a download's progress on when its percentage changes (log: when its tens change), and at the end."""

    def __init__(self, what: str, total: int | None, callback: ProgressCallback | None) -> None:
        self.what, self.total, self.done = what, total or 0, 0
        self.callback = callback or log_progress
        self.step = 1 if callback is not None else 10
        self.shown = -1

    def update(self, n: int) -> None:
        self.done += n
        if not self.total:
            return  # the server gave no length: nothing to show a share of
        progress = Progress(self.what, self.done, self.total)
        if progress.percent // self.step != self.shown // self.step:
            self.callback(progress)
        self.shown = progress.percent

    def close(self) -> None:
        if self.shown >= 0:
            self.callback(Progress(self.what, self.done, self.total, finished=True))


def download(url: str, dest: Path, *, expected_sha256: str | None = None, timeout: float = 60,
             progress: ProgressCallback | None = None) -> str:
    """Download ``url`` to ``dest`` (atomically), return its SHA256, check it when expected.

    ``progress`` is called as the share done changes, and once more (``finished``) at the end.
    """
    import requests

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length") or 0) or None
            if total:
                need_space(dest.parent, total + 256 * MiB, f"the download of {url}")
            reporter = _Reporter(f"downloading {dest.name}", total, progress)
            try:
                with open(part, "wb") as out:
                    for chunk in response.iter_content(chunk_size=1 * MiB):
                        out.write(chunk)
                        digest.update(chunk)
                        reporter.update(len(chunk))
            finally:
                reporter.close()
    except requests.RequestException as exc:
        part.unlink(missing_ok=True)
        raise VMError(f"download of {url} failed: {exc}", hint="check the URL and the network, or use "
                      "--vm-image debian (built offline)") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if expected_sha256 and actual != expected_sha256.lower():
        part.unlink(missing_ok=True)
        raise VMError(
            f"checksum mismatch for {url}: got sha256 {actual}, the checksum file says {expected_sha256}",
            hint="the download is corrupt or the mirror is changing; run again later",
        )
    part.replace(dest)
    return actual
