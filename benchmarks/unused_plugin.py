#!/usr/bin/env python3
"""Prints what an installed but unused pytest-flake costs a pytest run of an unrelated project.

    python3 benchmarks/unused_plugin.py [ROUNDS]

Runs a one-test project with the plugin loaded and with ``-p no:flake``, ROUNDS times each
(interleaved, in one run), and prints the median wall times and their ratio. A run that does
not use the plugin should cost the import of the plugin and nothing more (no ``nix`` call,
no session directory, no daemon).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(project: Path, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=project,
                   check=True, capture_output=True, env=dict(os.environ, PYTEST_ADDOPTS=""))
    return time.perf_counter() - started


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "test_plain.py").write_text("def test_plain():\n    assert 1 + 1 == 2\n")
        with_plugin: list[float] = []
        without: list[float] = []
        for _ in range(rounds):
            with_plugin.append(run(project))
            without.append(run(project, "-p", "no:flake"))
    a, b = statistics.median(with_plugin), statistics.median(without)
    print(f"unrelated project, {rounds} runs each: with pytest-flake {a:.3f}s, without {b:.3f}s, ratio {a / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
