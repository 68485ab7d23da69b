"""Docker against a real daemon and the offline example flake's ``docker`` output.

The daemon is the one DOCKER_HOST names (scripts/setup starts a private one). Under
CI a missing daemon fails these tests (the fixtures raise; tests/conftest.py exits).
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_flake.config import Settings
from pytest_flake.docker import Container, Docker, Image, component
from pytest_flake.errors import DockerError, FlakeTimeout, UsageError
from pytest_flake.nix import Flake
from pytest_flake.session import state_dir

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"
REF = f"path:{EXAMPLE}"
pytestmark = [pytest.mark.flake(REF), pytest.mark.docker]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.resolve(lambda name: None, lambda name: None, tmp_path)


@pytest.fixture
def daemon(flake_settings: Settings) -> Iterator[Docker]:
    """A connection of our own, with a short timeout, for the error cases."""
    with Docker.from_settings(flake_settings, session_id="pf-itest000") as docker:
        docker.timeout = 3
        yield docker


def labelled(docker: Docker, session_id: str) -> list[str]:
    return [c.name for c in docker.containers(session_id)]


def test_image_answers_http(docker_image: Callable[..., Image], docker_container: Callable[..., Container],
                            http) -> None:  # type: ignore[no-untyped-def]
    image = docker_image("docker")
    assert image.tag == "web-server:1.0" and image.id.startswith("sha256:")
    assert image.build is not None and image.build.out.name.endswith("docker-image-web-server.tar.gz")
    started = time.monotonic()
    container = docker_container(image, ports=[3031])
    http.get(container.url(3031)).expect(200, contains="web-server 1.0")
    print(f"container start to HTTP answer: {time.monotonic() - started:.2f}s")
    info = http.get(container.url(3031, "/cgi-bin/info")).expect(200).json()
    assert info["version"] == "1.0"
    assert 1024 <= container.port(3031) <= 65535
    assert "url:/" in container.wait_for_logs("url:/")  # busybox httpd -vv logs each request it served


def test_ports_are_on_loopback_only(docker_container: Callable[..., Container], flake_docker: Docker) -> None:
    container = docker_container("docker", ports=[3031])
    raw = flake_docker.client.api.inspect_container(container.id)
    bindings = raw["HostConfig"]["PortBindings"]["3031/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    published = raw["NetworkSettings"]["Ports"]["3031/tcp"]
    assert {b["HostIp"] for b in published} == {"127.0.0.1"}


def test_loads_once_per_session(docker_image: Callable[..., Image]) -> None:
    first = docker_image("docker")
    again = docker_image("docker")
    assert again.id == first.id and again.tag == first.tag
    assert again.loaded is False and again.new_layers == 0


def test_rebuild_loads_only_changed_layers(flake: Flake, flake_settings: Settings) -> None:
    """docker-next (1.1) after docker (1.0): only the layers 1.0 does not have are new."""
    v1_build, v2_build = flake.build("docker"), flake.build("docker-next")
    with Docker.from_settings(flake_settings) as docker:
        v1 = docker.image(v1_build)
        v2_archive = docker.image(v2_build).archive
        assert v2_archive is not None and v1.archive is not None
        docker.client.api.remove_image(v2_archive.id, force=True)  # as if 1.1 were just built
    with Docker.from_settings(flake_settings) as docker:
        v2 = docker.image(v2_build)
    assert v2.loaded and v2.tag == "web-server:1.1"
    expected = len(set(v2_archive.diff_ids) - set(v1.archive.diff_ids))
    assert v2.new_layers == expected
    assert set(v2_archive.diff_ids) & set(v1.archive.diff_ids), "1.0 and 1.1 share the busybox layer"
    assert v2.new_layers == 1 < v2.layers


def test_stream_script_is_piped_to_the_daemon(tmp_path: Path, flake: Flake, flake_settings: Settings) -> None:
    """A streamLayeredImage-style output: a script whose stdout is the archive."""
    build = flake.build("docker-next")
    script = tmp_path / "stream-web-server"
    script.write_text(f"#!/bin/sh\nexec gzip -dc {build.out}\n")
    script.chmod(0o755)
    with Docker.from_settings(flake_settings) as docker:
        archive_id = docker.image(build).id
        docker.client.api.remove_image(archive_id, force=True)
    with Docker.from_settings(flake_settings) as docker:
        image = docker.image(script)
        assert image.loaded and image.id == archive_id and image.tag == "web-server:1.1"
        assert image.archive is not None and image.archive.kind == "streamLayeredImage script"
    with Docker.from_settings(flake_settings) as docker:
        assert docker.image(script).loaded is False


def test_testinfra_host(docker_container: Callable[..., Container]) -> None:
    container = docker_container("docker", ports=[3031])
    host = container.host
    assert host.backend.get_pytest_id() == f"docker://{container.id}"
    assert host.run("echo hello").stdout == "hello\n"
    assert host.file(str(next(iter(container.image.archive.config["config"]["Cmd"])))).exists  # type: ignore[union-attr]
    assert host.run("exit 3").rc == 3


def test_image_by_tag_and_default_ports(docker_image: Callable[..., Image],
                                        docker_container: Callable[..., Container], http) -> None:  # type: ignore[no-untyped-def]
    """A tag the daemon holds runs too; ports the image exposes are published without asking."""
    docker_image("docker")
    container = docker_container("web-server:1.0")
    http.get(container.url(3031)).expect(200, contains="web-server 1.0")


def test_env_and_command(docker_container: Callable[..., Container], http) -> None:  # type: ignore[no-untyped-def]
    container = docker_container("docker", ports=[8080], env={"LISTEN": "8080"})
    http.get(container.url(8080)).expect(200, contains="web-server 1.0")


def test_wait_for_logs_names_the_text_and_shows_the_logs(docker_container: Callable[..., Container],
                                                         http) -> None:  # type: ignore[no-untyped-def]
    container = docker_container("docker", ports=[3031])
    http.get(container.url(3031, "/cgi-bin/info")).expect(200)
    assert "url:/cgi-bin/info" in container.wait_for_logs("url:/cgi-bin/info")
    with pytest.raises(FlakeTimeout) as caught:
        container.wait_for_logs("url:/never-asked", timeout=0.5)
    assert "'url:/never-asked' in the logs of container " in str(caught.value)
    assert "url:/cgi-bin/info" in "\n".join(getattr(caught.value, "__notes__", []))


def test_stop_keeps_logs(docker_container: Callable[..., Container], http) -> None:  # type: ignore[no-untyped-def]
    container = docker_container("docker", ports=[3031])
    http.get(container.url(3031, "/cgi-bin/info")).expect(200)
    container.wait_for_logs("url:/cgi-bin/info")  # httpd logs a request just after it answered
    container.stop(timeout=1)
    assert container.status == "exited"
    assert "url:/cgi-bin/info" in container.logs()  # busybox httpd -vv logs each request
    container.stop()  # idempotent
    container.remove()
    assert container.status == "removed"
    assert "url:/cgi-bin/info" in container.logs()  # kept after removal too


def test_port_not_published(docker_container: Callable[..., Container]) -> None:
    container = docker_container("docker", ports=[3031])
    with pytest.raises(UsageError, match="port 9999/tcp of container .* is not published") as raised:
        container.port(9999)
    assert "pass ports=(9999,)" in str(raised.value) and "exposes: 3031/tcp" in str(raised.value)


def test_container_exits_early(daemon: Docker, docker_image: Callable[..., Image]) -> None:
    image = docker_image("docker")
    with pytest.raises(DockerError, match=r"exited early with code 1") as raised:
        with daemon.container(image, ports=[3031], env={"LISTEN": "not-a-port"}):
            pass
    assert "not-a-port" in "".join(getattr(raised.value, "__notes__", []))
    assert labelled(daemon, "pf-itest000") == []  # removed even though it failed to start


def test_port_never_answers(daemon: Docker, docker_image: Callable[..., Image]) -> None:
    image = docker_image("docker")
    with pytest.raises(FlakeTimeout, match="not ready after") as raised:
        with daemon.container(image, ports=[4000]):
            pass
    assert "listening on every address" in str(raised.value)
    assert labelled(daemon, "pf-itest000") == []


def test_not_an_image(docker_image: Callable[..., Image]) -> None:
    with pytest.raises(UsageError, match="is not a Docker image archive: it is a systemd unit file"):
        docker_image("web-service")


def test_sweep_removes_containers_of_dead_sessions(flake_settings: Settings,
                                                   docker_image: Callable[..., Image]) -> None:
    image = docker_image("docker")
    dead = "pf-deadbeef"
    with Docker.from_settings(flake_settings, session_id=dead) as docker:
        docker.container(image, ports=[3031]).start()  # never removed: as if its session was killed
        assert len(labelled(docker, dead)) == 1
        component(flake_settings).sweep([dead], state_dir())
        assert labelled(docker, dead) == []


# --- whole sessions ------------------------------------------------------------------------------------------
INNER = textwrap.dedent(
    """
    import json, os, signal
    from pathlib import Path

    def test_inner(docker_image, docker_container, flake_session, http):
        image = docker_image("docker")
        container = docker_container(image, ports=[3031])
        http.get(container.url(3031)).expect(200, contains="web-server 1.0")
        Path(os.environ["REPORT"]).write_text(json.dumps({
            "session": flake_session.id, "loaded": image.loaded, "new_layers": image.new_layers,
            "container": container.name}))
        if os.environ.get("KILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        docker_container(image).stop()  # a stopped container is removed too
    """
)


@pytest.fixture
def inner(pytester: pytest.Pytester, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[pytest.RunResult, dict[str, object]]]:
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))

    def run(kill: bool = False) -> tuple[pytest.RunResult, dict[str, object]]:
        report = tmp_path / "report.json"
        report.unlink(missing_ok=True)
        monkeypatch.setenv("REPORT", str(report))
        if kill:
            monkeypatch.setenv("KILL", "1")
        else:
            monkeypatch.delenv("KILL", raising=False)
        result = pytester.runpytest_subprocess("--flake", REF, "-p", "no:cacheprovider")
        return result, json.loads(report.read_text())

    return run


def test_second_session_loads_nothing_and_leaves_nothing(inner, flake_docker: Docker) -> None:  # type: ignore[no-untyped-def]
    first, report1 = inner()
    first.assert_outcomes(passed=1)
    second, report2 = inner()
    second.assert_outcomes(passed=1)
    assert report2["loaded"] is False and report2["new_layers"] == 0
    for report in (report1, report2):
        assert labelled(flake_docker, str(report["session"])) == []


def test_killed_session_is_swept_by_the_next(inner, flake_docker: Docker) -> None:  # type: ignore[no-untyped-def]
    killed, report = inner(kill=True)
    assert killed.ret != 0
    assert labelled(flake_docker, str(report["session"])) == [report["container"]]
    after, report2 = inner()
    after.assert_outcomes(passed=1)
    assert labelled(flake_docker, str(report["session"])) == []
    assert labelled(flake_docker, str(report2["session"])) == []


FAILING = textwrap.dedent(
    """
    import json, os
    from pathlib import Path

    def test_fails(docker_container, flake_session, http):
        container = docker_container("docker", ports=[3031])
        http.get(container.url(3031, "/missing"))
        Path(os.environ["REPORT"]).write_text(json.dumps({"session": flake_session.id, "container": container.name}))
        assert False, "the service is wrong"
    """
)


def test_failed_test_gets_logs_and_keep_keeps(pytester: pytest.Pytester, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, flake_docker: Docker) -> None:
    """A failed test's report carries the container's logs; --flake-keep keeps it, the next session sweeps."""
    pytester.makepyfile(test_failing=FAILING)
    monkeypatch.setenv("PYTEST_FLAKE_STATE", str(tmp_path / "state"))
    report = tmp_path / "report.json"
    monkeypatch.setenv("REPORT", str(report))
    result = pytester.runpytest_subprocess("--flake", REF, "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*logs of container pf-*-web-server-1 (web-server:1.0)*", "*url:/missing*"])
    gone = json.loads(report.read_text())
    assert labelled(flake_docker, str(gone["session"])) == []

    result = pytester.runpytest_subprocess("--flake", REF, "-p", "no:cacheprovider", "--flake-keep")
    result.assert_outcomes(failed=1)
    kept = json.loads(report.read_text())
    result.stdout.fnmatch_lines([f"*kept container {kept['container']}*docker --host * exec -it {kept['container']}*"])
    assert labelled(flake_docker, str(kept["session"])) == [kept["container"]]
    pytester.makepyfile(test_failing="def test_nothing(flake_session):\n    pass\n")  # uses the plugin: sweeps
    pytester.runpytest_subprocess("--flake", REF, "-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert labelled(flake_docker, str(kept["session"])) == []
