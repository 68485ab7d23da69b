#!/usr/bin/env python3
"""Prints what loading the example flake's image costs, and what a reload saves.

    DOCKER_HOST=unix:///... python3 benchmarks/docker_load.py [FLAKE_DIR]

Figures, all in this one run against the daemon of ``DOCKER_HOST``:
- first load of ``docker`` (1.0) into a daemon that holds none of it;
- the same image in a new session (the daemon has it: nothing is sent);
- ``docker-next`` (1.1) after 1.0: only the layer that changed is new;
- a container from start to its first HTTP answer.
Images of the example are removed before and after.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import requests

from pytest_flake.config import Settings
from pytest_flake.docker import Docker, inspect_archive
from pytest_flake.nix import Flake


def main() -> int:
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent / "examples" / "offline")
    flake = Flake(f"path:{directory.resolve()}")
    v1, v2 = flake.build("docker"), flake.build("docker-next")
    settings = Settings.resolve(option=lambda name: None, ini=lambda name: None, invocation_dir=Path.cwd())

    def forget(docker: Docker) -> None:
        for build in (v2, v1):
            image = docker.has_image(inspect_archive(build.out).id)
            if image is not None:
                docker.client.api.remove_image(image["Id"], force=True)

    with Docker.from_settings(settings) as docker:
        forget(docker)
    with Docker.from_settings(settings) as docker:
        first = docker.image(v1)
    with Docker.from_settings(settings) as docker:  # a new session: the daemon holds the image already
        started = time.perf_counter()
        again = docker.image(v1)
        again_s = time.perf_counter() - started
    with Docker.from_settings(settings) as docker:
        upgrade = docker.image(v2)
        starts = []
        for _ in range(3):
            started = time.perf_counter()
            with docker.container(first, ports=[3031]) as container:
                requests.get(container.url(3031, "/"), timeout=10).raise_for_status()
                starts.append(time.perf_counter() - started)
        forget(docker)

    print(f"image: {first.tag} ({first.layers} layers)")
    print(f"first load, daemon holds nothing:   {first.seconds * 1000:8.1f} ms, {first.new_layers} layers new")
    print(f"new session, daemon holds it:       {again_s * 1000:8.1f} ms, loaded={again.loaded}, "
          f"{again.new_layers} layers new")
    print(f"ratio first load / new session:     {first.seconds / again_s:8.1f}x")
    print(f"{upgrade.tag} after {first.tag}:      {upgrade.seconds * 1000:8.1f} ms, {upgrade.new_layers} of "
          f"{upgrade.layers} layers new")
    print(f"container start to first HTTP 200 (median of {len(starts)}): {statistics.median(starts) * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
