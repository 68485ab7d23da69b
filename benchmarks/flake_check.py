#!/usr/bin/env python3
"""Prints the wall time of ``pytest --flake-check`` on the offline example, beside the same checks by hand.

    python3 benchmarks/flake_check.py [ROUNDS]

Both runs test the example's eight packages the same way: the programs exist and are executable,
the two Docker images run with port 3031 answering and are still up a second later, the unit's
``ExecStart`` exists and ``systemd-analyze verify`` accepts it, the two portable images attach in a
systemd container and detach. One is ``pytest --flake=EXAMPLE --flake-check`` in an empty folder;
the other is a test file written with the public fixtures. ROUNDS runs each (interleaved, after
one warm-up run of each, so the builds and the container tree are cached), median wall times printed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "offline"

BY_HAND = '''
import os
import subprocess
import time
from pathlib import Path

import pytest


@pytest.mark.parametrize("attr", ["default", "web-server", "web-server-next"])
def test_program(flake, attr):
    program = Path(flake.program(attr))
    assert os.access(program, os.X_OK)


@pytest.mark.parametrize("attr", ["docker", "docker-next"])
def test_image(docker_container, attr):
    container = docker_container(attr, ports=[3031])
    time.sleep(1.0)
    assert container.status == "running", container.logs()


def test_unit(flake, tmp_path):
    text = flake.build("web-service").out.read_text()
    exec_start = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart="))
    assert os.access(exec_start.split()[0], os.X_OK)
    (tmp_path / "web-server.service").write_text(text)
    subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "web-server.service")], check=True)


@pytest.mark.parametrize("attr", ["portable", "portable-next"])
def test_portable(systemd_container, portable_service, attr):
    service = portable_service(systemd_container, attr)
    assert all(service.is_active(unit) for unit in service.units)
    service.detach()
'''


def run(project: Path, *args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--flake=path:{EXAMPLE}",
                           *args], cwd=project, capture_output=True, text=True, env=dict(os.environ, PYTEST_ADDOPTS=""))
    seconds = time.perf_counter() - started
    if proc.returncode != 0 or "8 passed" not in proc.stdout:
        raise SystemExit(f"the run in {project} did not pass 8 tests:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return seconds


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory() as empty, tempfile.TemporaryDirectory() as written:
        (Path(written) / "test_by_hand.py").write_text(BY_HAND)
        checked, by_hand = Path(empty), Path(written)
        run(checked, "--flake-check")  # warm-up: builds, the container tree, the images in the daemon
        run(by_hand)
        automatic: list[float] = []
        manual: list[float] = []
        for _ in range(rounds):
            automatic.append(run(checked, "--flake-check"))
            manual.append(run(by_hand))
    a, b = statistics.median(automatic), statistics.median(manual)
    print(f"examples/offline, 8 outputs, {rounds} runs each after a warm-up: --flake-check {a:.2f}s "
          f"(runs {', '.join(f'{x:.2f}' for x in automatic)}), the same checks as hand-written tests {b:.2f}s "
          f"(runs {', '.join(f'{x:.2f}' for x in manual)}), ratio {a / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
