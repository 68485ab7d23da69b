"""The service fixture against the offline example, and the VM waits, on real Nix, Docker and libvirt."""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from pytest_flake import CheckFailed, CheckTimeout, FlakeTimeout

pytestmark = pytest.mark.flake("examples/offline")

NEXT = {"local": "web-server-next", "docker": "docker-next", "portable": "portable-next"}


@pytest.mark.flake_service(3031)
def test_one_body_every_target_and_upgrade(service, http):
    info = service.url("/cgi-bin/info")
    assert info.startswith("http://127.0.0.1:")
    http.get(service.url("/"), retry_for=30).expect(200, contains="web-server 1.0")
    http.get(info, retry_for=30).expect(200, json={"name": "web-server", "version": "1.0"})
    assert (service.vm is not None) == (service.target == "portable")

    service.upgrade(NEXT[service.target])
    assert service.url("/cgi-bin/info") == info  # the same address after the upgrade
    http.get(info, retry_for=30).expect(200, json={"version": "1.1"})
    logs = service.logs()
    assert logs.strip(), f"no logs from the {service.target} service"
    if service.target == "portable":
        assert service.vm is not None
        assert service.vm.succeed("portablectl is-attached web-server_1.1").strip().startswith("running")
        http.get(info).expect(200, json={"portable": "web-server_1.1.raw"})


@pytest.mark.flake_service(3031, env={"GREETING": "port {port}"})
def test_env_port_placeholder_is_the_local_port(service, http):
    """``{port}`` in env is the port the local run listens on; elsewhere the service's own port."""
    if service.target == "docker":
        out = service.container.host.run("env").stdout  # type: ignore[attr-defined]
        assert "GREETING=port 3031" in out
    elif service.target == "portable":
        assert service.vm is not None
        assert "GREETING=port 3031" in service.vm.succeed("systemctl show -P Environment web-server.service")
    else:
        port = service.url().split(":")[2].split("/")[0]
        pid = service.process.pid  # type: ignore[attr-defined]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"GREETING=port {port}".encode() in environ
    http.get(service.url("/"), retry_for=30).expect(200)


def test_vm_waits(vm, tmp_path):
    # succeed / fail
    assert vm.succeed("echo hello").strip() == "hello"
    assert vm.fail(["sh", "-c", "echo nope; exit 4"]).strip() == "nope"
    with pytest.raises(CheckFailed) as failed:
        vm.succeed("echo to-stderr >&2; exit 5")
    assert failed.value.rc == 5 and "to-stderr" in failed.value.stderr
    assert failed.value.journal.strip()  # the guest's journal tail comes along

    # a unit that fails to start: reported at once, with its journal line, not after the timeout
    unit = "[Service]\nExecStart=/bin/sh -c 'echo pf-broken: config file missing; exit 3'\n"
    vm.succeed(f"printf %s {shlex.quote(unit)} > /run/systemd/system/pf-broken.service && systemctl daemon-reload")
    vm.succeed("systemctl start --no-block pf-broken.service")
    with pytest.raises(CheckFailed) as broken:
        vm.wait_for_unit("pf-broken.service", timeout=600)
    assert not isinstance(broken.value, FlakeTimeout)
    assert "pf-broken.service failed" in str(broken.value)
    assert "pf-broken: config file missing" in str(broken.value)

    # a unit that comes up, its port, and a wait that times out
    vm.succeed("mkdir -p /srv/www && echo ok > /srv/www/index.html")
    vm.succeed("systemd-run --unit=pf-web busybox httpd -f -p 8080 -h /srv/www")
    vm.wait_for_unit("pf-web")
    vm.wait_for_open_port(8080)
    assert vm.wait_until_succeeds("busybox wget -qO- http://127.0.0.1:8080/").strip() == "ok"
    with pytest.raises(CheckTimeout) as slow:
        vm.wait_for_open_port(8081, timeout=2)
    assert isinstance(slow.value, FlakeTimeout)
    assert "web" in vm.journal("pf-web.service", lines=20) or "pf-web" in vm.journal(lines=200)

    # console and copy_from
    vm.succeed("echo pf-console-marker-42 > /dev/ttyS0")
    assert vm.wait_for_console_text(r"pf-console-marker-\d+") == "pf-console-marker-42"
    vm.succeed("mkdir -p /root/out/sub && echo one > /root/out/a.txt && echo two > /root/out/sub/b.txt "
               "&& chmod 0750 /root/out/a.txt")
    vm.copy_from("/root/out", tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_text() == "one\n"
    assert (tmp_path / "out" / "sub" / "b.txt").read_text() == "two\n"
    assert (tmp_path / "out" / "a.txt").stat().st_mode & 0o777 == 0o750


HANGING = """
import json
import os
import time
import urllib.error
import urllib.request

import pytest

@pytest.mark.flake_service(3031)
def test_hangs(service):
    seen = {"target": service.target}
    if service.target == "local":
        seen["pid"] = service.process.pid
    elif service.target == "docker":
        seen["container"] = service.container.name
    else:
        seen["vm"] = service.vm.name
    with open(os.path.join(os.environ["SEEN_DIR"], service.target + ".json"), "w") as out:
        json.dump(seen, out)
    for _ in range(30):  # a request, so the service has written something
        try:
            urllib.request.urlopen(service.url("/hanging-" + service.target), timeout=5)
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(1)
    time.sleep(600)
"""


def _real_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner run uses the cached VM image and warm states (pytester moves HOME)."""
    if not os.environ.get("PYTEST_FLAKE_STATE") and not os.environ.get("XDG_CACHE_HOME"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _containers() -> str:
    return subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True,
                          check=True).stdout


def _domains() -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True,
                          text=True, check=True).stdout


def test_pytest_timeout_leaves_nothing_behind_in_any_target(pytester: pytest.Pytester, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_hanging=HANGING)
    seen_dir = tmp_path / "seen"
    seen_dir.mkdir()
    monkeypatch.setenv("SEEN_DIR", str(seen_dir))
    _real_state(monkeypatch)
    example = Path(__file__).resolve().parents[2] / "examples" / "offline"
    result = pytester.runpytest_subprocess(f"--flake={example}", "--vm-image=debian", "-p", "timeout",
                                           "--timeout=15", "-o", "timeout_func_only=true", "-rA", timeout=900)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*Timeout (>15.0s) from pytest-timeout*"])
    out = result.stdout.str()
    assert "output of local service default" in out and "url:/hanging-local" in out
    assert "logs of the container of docker service docker" in out and "url:/hanging-docker" in out
    assert "journal of portable service portable" in out and "Started web-server.service" in out
    assert "console of VM" in out
    seen = {p.stem: json.loads(p.read_text()) for p in seen_dir.glob("*.json")}
    assert set(seen) == {"local", "docker", "portable"}
    assert not _alive(seen["local"]["pid"])
    assert seen["docker"]["container"] not in _containers().split()
    assert seen["portable"]["vm"] not in _domains().split()


KEPT = """
import pytest

@pytest.mark.flake_service(3031)
def test_fails(service):
    assert False, "failing on purpose"
"""


def test_flake_keep_prints_how_to_open_a_shell_in_the_container(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_kept=KEPT)
    example = Path(__file__).resolve().parents[2] / "examples" / "offline"
    result = pytester.runpytest_subprocess(f"--flake={example}", "--flake-targets=docker", "--flake-keep",
                                           timeout=600)
    result.assert_outcomes(failed=1)
    match = re.search(r"kept docker service of failed \S+: docker --host \S+ exec -it (\S+) ([^;]+);",
                      result.stdout.str())
    assert match is not None, result.stdout.str()
    name, shell_argv = match.group(1), shlex.split(match.group(2))
    try:
        assert name in _containers().split()
        # the printed shell exists in the image, though a Nix image has no /bin/sh
        shell = subprocess.run(["docker", "exec", name, *shell_argv, "-c", "echo in-the-kept-container"],
                               capture_output=True, text=True)
        assert shell.stdout.strip() == "in-the-kept-container"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
