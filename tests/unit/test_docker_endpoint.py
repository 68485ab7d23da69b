"""Endpoint resolution, the unreachable-daemon error, and probes: no daemon needed."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_flake import docker
from pytest_flake.config import Settings
from pytest_flake.errors import DockerError, UsageError
from pytest_flake.waiting import NotReady


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.resolve(lambda name: None, lambda name: None, tmp_path, environ=env)


def test_endpoint_from_settings(tmp_path: Path) -> None:
    found = settings(tmp_path, DOCKER_HOST="unix:///tmp/elsewhere.sock")
    assert docker.endpoint(found) == ("unix:///tmp/elsewhere.sock", "$DOCKER_HOST")
    assert docker.describe_endpoint(found) == "unix:///tmp/elsewhere.sock (from $DOCKER_HOST)"


def test_endpoint_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert docker.endpoint(settings(tmp_path)) == (docker.DEFAULT_ENDPOINT, "default")


def test_unreachable_daemon_names_endpoint_and_fix(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/no-daemon.sock"
    client = docker.Docker(url, source="--docker-host")
    with pytest.raises(DockerError) as raised:
        client.connect(timeout=2)
    message = str(raised.value)
    assert f"no Docker daemon answers at {url} (from --docker-host)" in message
    assert "dockerd --host" in message and "DOCKER_HOST" in message


def test_sweep_and_doctor_without_daemon(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    found = settings(tmp_path, DOCKER_HOST=f"unix://{tmp_path}/no-daemon.sock")
    component = docker.component(found)
    with caplog.at_level(logging.DEBUG, logger="pytest_flake"):
        component.sweep(["pf-00000000"], tmp_path)  # quiet: nothing to sweep where nothing answers
    said = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert any(level == logging.DEBUG and "docker: no sweep: no Docker daemon answers" in text for level, text in said)
    assert not [text for level, text in said if level >= logging.WARNING]
    checks = component.doctor(found)
    assert checks[-1][0] is False and "no Docker daemon answers" in checks[-1][1]


def test_docker_is_a_registered_component() -> None:
    from pytest_flake.components import NAMES, Component, components

    assert "docker" in NAMES
    made = components(None, ["docker"])[0]
    assert made.name == "docker"
    loaded = made.load()  # type: ignore[attr-defined]
    assert isinstance(loaded, docker.DockerComponent) and isinstance(loaded, Component)


@pytest.mark.parametrize(("port", "key"), [("3031", "3031/tcp"), (3031, "3031/tcp"), ("3031/tcp", "3031/tcp"),
                                           ("53/udp", "53/udp"), ("8080/sctp", "8080/sctp")])
def test_port_keys(port: int | str, key: str) -> None:
    assert docker.port_key(port) == key


@pytest.mark.parametrize("port", ["http", "3031/icmp", "-1", ""])
def test_bad_port(port: str) -> None:
    with pytest.raises(UsageError, match="is not a container port"):
        docker.port_key(port)


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, list[str]]]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    mode: list[str] = ["close"]

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if mode[0] == "close":
                conn.close()
            else:
                time.sleep(1)
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield server, mode
    server.close()


def test_port_answers_tells_proxy_from_service(listener: tuple[socket.socket, list[str]]) -> None:
    """docker-proxy accepts and closes while nothing listens behind it: not ready."""
    server, mode = listener
    port = server.getsockname()[1]
    with pytest.raises(NotReady, match="closed at once"):
        docker.port_answers(port)
    mode[0] = "hold"
    docker.port_answers(port)


def test_port_answers_refused() -> None:
    from pytest_flake.waiting import free_port

    with pytest.raises(NotReady, match="refused"):
        docker.port_answers(free_port())


def test_importing_docker_and_portable_imports_no_sdk_testinfra_or_pytest() -> None:
    import json
    import subprocess
    import sys

    code = ("import json, sys, pytest_flake.docker, pytest_flake.portable; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}).stdout
    loaded = set(json.loads(out))
    assert "pytest_flake" in loaded
    assert not loaded & {"docker", "testinfra", "pytest", "_pytest", "zstandard", "paramiko"}
