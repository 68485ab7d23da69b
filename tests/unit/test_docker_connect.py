"""Docker is found the way the docker SDK's ``from_env()`` and the CLI find it (issue 14, item 5).

Contexts, the rootless socket, Podman's socket and the TLS variables; the last test
connects to the real daemon through a docker context.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pytest_flake import docker
from pytest_flake.config import Settings
from pytest_flake.errors import DockerError

OUTER_DOCKER_HOST = os.environ.get("DOCKER_HOST")  # the suite's daemon, read before the fixtures clear it


@pytest.fixture(autouse=True)
def clean_docker_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "docker-config"
    config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    return config


def settings(tmp_path: Path) -> Settings:
    return Settings.resolve(lambda name: None, lambda name: None, tmp_path, environ={})


def add_context(config: Path, name: str, host: str, *, current: bool = True) -> None:
    meta = config / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Metadata": {},
                                                "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}}}))
    (config / "config.json").write_text(json.dumps({"currentContext": name} if current else {}))


def test_current_context_is_used(tmp_path: Path, clean_docker_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_context(clean_docker_env, "ci", "unix:///srv/ci/docker.sock")
    assert docker.endpoint(settings(tmp_path)) == ("unix:///srv/ci/docker.sock", "docker context ci")
    add_context(clean_docker_env, "other", "tcp://127.0.0.1:2376", current=False)
    monkeypatch.setenv("DOCKER_CONTEXT", "other")
    assert docker.endpoint(settings(tmp_path)) == ("tcp://127.0.0.1:2376", "docker context other")
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/wins.sock")  # DOCKER_HOST wins over any context
    assert docker.endpoint(settings(tmp_path)) == ("unix:///tmp/wins.sock", "$DOCKER_HOST")


def test_default_context_means_the_default_socket(tmp_path: Path, clean_docker_env: Path) -> None:
    (clean_docker_env / "config.json").write_text(json.dumps({"currentContext": "default"}))
    url, source = docker.endpoint(settings(tmp_path))
    assert source in ("default", "podman socket") and not source.startswith("docker context")


def test_broken_context_is_a_clear_error(tmp_path: Path, clean_docker_env: Path) -> None:
    (clean_docker_env / "config.json").write_text(json.dumps({"currentContext": "gone"}))
    meta = clean_docker_env / "contexts" / "meta" / hashlib.sha256(b"gone").hexdigest() / "meta.json"
    with pytest.raises(DockerError) as raised:
        docker.endpoint(settings(tmp_path))
    assert str(raised.value) == (
        f"docker context 'gone' (the current context) has no readable endpoint in {meta} ('docker context ls' "
        "lists the contexts; 'docker context use default', or pass --docker-host)")


def test_rootless_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "run-user"
    runtime.mkdir()
    (runtime / "docker.sock").touch()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setattr("pytest_flake.docker.daemon.os.geteuid", lambda: 1000)
    assert docker.endpoint(settings(tmp_path)) == (f"unix://{runtime}/docker.sock", "rootless docker socket")


def test_podman_socket_when_there_is_no_docker_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if Path("/var/run/docker.sock").exists():
        pytest.skip("this machine has /var/run/docker.sock, which comes first")
    runtime = tmp_path / "run-user"
    (runtime / "podman").mkdir(parents=True)
    (runtime / "podman" / "podman.sock").touch()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert docker.endpoint(settings(tmp_path)) == (f"unix://{runtime}/podman/podman.sock", "podman socket")


def test_tls_variables_give_the_sdk_its_tls_config(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (certs / name).write_text("not checked until a connection is made\n")
    tls = docker.tls_config("$DOCKER_HOST", {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs),
                                             "DOCKER_HOST": "tcp://127.0.0.1:2376"})
    assert tls is not None
    assert tls.cert == (str(certs / "cert.pem"), str(certs / "key.pem"))
    assert tls.verify is True and tls.ca_cert == str(certs / "ca.pem")
    assert docker.tls_config("$DOCKER_HOST", {}) is None


def test_tls_without_the_files_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "no-certs"
    empty.mkdir()
    with pytest.raises(DockerError) as raised:
        docker.tls_config("$DOCKER_HOST", {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(empty)})
    message = str(raised.value)
    assert message.startswith("the Docker TLS settings do not work: ")
    assert message.endswith(f"(DOCKER_CERT_PATH ({empty}) must hold ca.pem, cert.pem and key.pem)")


def test_connects_to_the_real_daemon_through_a_context(tmp_path: Path, clean_docker_env: Path) -> None:
    real = OUTER_DOCKER_HOST
    if not real:
        pytest.skip("no Docker daemon configured (scripts/setup starts one)")
    add_context(clean_docker_env, "pf-test", real)
    client = docker.Docker.from_settings(settings(tmp_path))
    assert client.source == "docker context pf-test"
    try:
        client.connect(timeout=10)
        assert client.version.startswith("Docker ")
    finally:
        client.close()


def test_header_survives_a_broken_context(tmp_path: Path, clean_docker_env: Path) -> None:
    from pytest_flake import doctor

    (clean_docker_env / "config.json").write_text(json.dumps({"currentContext": "gone"}))
    line = next(line for line in doctor.header(settings(tmp_path)) if line.startswith("docker: "))
    assert line.startswith("docker: unknown (docker context 'gone' (the current context) has no readable endpoint")
