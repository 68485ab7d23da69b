#!/usr/bin/env python3
"""Prints what the session build cache and local runs cost, on the offline example flake.

    python3 benchmarks/flake_build.py [FLAKE_DIR]

Figures: the first ``flake.build()`` of an output in a session (a ``nix build`` whose
result is already in the store, as in every session after the first), the second one
(served from the session cache: no nix process), and ``flake.run()`` to a port that
answers HTTP. Ratios are of timings taken in this one run.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import requests

from pytest_flake.nix import Flake


def timed(fn, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent / "examples" / "offline")
    ref = f"path:{directory.resolve()}"
    attrs = ("default", "docker", "web-service", "portable")

    Flake(ref).build("default")  # warm the store once, so every figure below is of a built output
    def new_session() -> None:
        fresh = Flake(ref)
        for a in attrs:
            fresh.build(a)

    first = timed(new_session, 5)
    flake = Flake(ref)
    for a in attrs:
        flake.build(a)
    calls = flake.nix.calls
    cached = timed(lambda: [flake.build(a) for a in attrs], 200)
    assert flake.nix.calls == calls, "a cached build ran nix"

    def run_once() -> None:
        with flake.run(port=0) as server:
            requests.get(server.url("/"), timeout=5).raise_for_status()

    runs = timed(run_once, 5)
    first_ms = statistics.median(first) * 1000
    cached_ms = statistics.median(cached) * 1000
    print(f"flake: {ref}")
    print(f"build of {len(attrs)} outputs, new session (nix build, outputs in the store): {first_ms:8.1f} ms")
    print(f"build of {len(attrs)} outputs, same session (cache, 0 nix processes):       {cached_ms:8.3f} ms")
    print(f"ratio new session / cached: {first_ms / cached_ms:,.0f}x")
    print(f"flake.run() to first HTTP answer (median of {len(runs)}): {statistics.median(runs) * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
