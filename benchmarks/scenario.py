"""The seed's whole workflow on the offline example, by hand (shell-style steps) and as one pytest-flake run.

    DOCKER_HOST=unix:///... python benchmarks/scenario.py [--flake DIR] [--no-shell] [--no-xdist] [--xdist-suite S]

The two ways, timed in this one run, step by step:

- shell: what a user types today, driven from here with argv lists: ``nix build`` of
  ``default``, ``docker``, ``portable`` and ``portable-next``; run ``result/bin/web-server`` on a
  127.0.0.1 port and curl it; ``docker load`` + ``docker run -p 127.0.0.1::3031`` + curl; a VM
  booted with ``virsh create`` from a ``qemu-img`` overlay of the cached Debian image (the one
  the plugin builds for ``--vm-image debian``), an SSH key handed in as a systemd credential,
  QEMU user networking with ``restrict=on`` and 127.0.0.1 forwards, waiting with
  ``ssh ... true``; ``scp`` of the portable ``.raw``, ``ssh ... portablectl attach --now``, curl;
  ``scp`` of the next version, ``portablectl reattach --now``, curl; then the clean-up.
- plugin: ``python -m pytest --flake=... --vm-image=debian`` over a small test file written to a
  temporary folder, doing the same steps through the fixtures; the test file records each
  step, and the guest commands (SSH round trips) the plugin makes in the portable steps.
  The whole run is timed from the outside, and each test's setup/call/teardown comes from
  ``--durations=0``.

Then a suite under pytest-xdist, ``-n 2`` against ``-n 0``: the flake's own ``tests/`` (the example's
has two VM tests, so two workers have something to share; ``--xdist-suite scenario`` takes the
generated file and the run above as ``-n 0``). Skipped, saying so, when pytest-xdist is not installed.

Prints each step, and the ratios shell/plugin and ``-n 0``/``-n 2``. Durations are printed,
never asserted. Everything started here is removed at the end, also on Ctrl-C (the pytest
runs clean up their own); every port is bound to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NIX = ["nix", "--extra-experimental-features", "nix-command flakes"]
PREFIX = f"bench-scenario-{os.getpid()}"  # not "pf-": no pytest-flake sweep ever takes these for its own


# ---- helpers ------------------------------------------------------------------------------


@dataclass
class Steps:
    """Named durations in the order they were taken."""

    times: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.monotonic() - started
            print(f"  shell  {name:<34} {self.times[name]:7.2f}s", flush=True)


def sh(argv: Sequence[str], *, timeout: float = 600, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {(result.stderr or result.stdout)[-800:]}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop_group(server: subprocess.Popen[bytes]) -> None:
    """End a server started in a process group of its own, and reap it."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
    server.wait()


def curl_until(url: str, text: str, timeout: float = 120) -> None:
    """``until curl -fsS URL | grep -q TEXT; do sleep 0.1; done`` (urllib when there is no curl)."""
    assert url.startswith("http://127.0.0.1:"), url
    deadline = time.monotonic() + timeout
    curl = shutil.which("curl")
    while True:
        if curl:
            done = sh([curl, "-fsS", "--max-time", "5", url], check=False, timeout=10)
            body = done.stdout if done.returncode == 0 else ""
        else:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = response.read().decode()
            except (OSError, urllib.error.URLError):
                body = ""
        if text in body:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} never answered with {text!r}")
        time.sleep(0.1)


def nix_build(flake: Path, attr: str) -> Path:
    out = sh([*NIX, "build", "--json", "--no-link", f"path:{flake}#{attr}"]).stdout
    return Path(json.loads(out)[0]["outputs"]["out"])


def raw_of(path: Path) -> Path:
    """The ``.raw`` file of a portable output (the output itself, or the one file in it)."""
    return path if path.is_file() else next(path.glob("*.raw"))


# ---- the shell way --------------------------------------------------------------------------


def debian_image() -> Path:
    """The folder of the cached Debian VM image (``--vm-image debian``): disk.qcow2, vmlinuz, initrd.img, cmdline."""
    from pytest_flake.images import debian_image_dir, image_cache

    directory = debian_image_dir(image_cache())
    if not (directory / "disk.qcow2").is_file():
        raise SystemExit(f"no cached Debian VM image in {directory}: run the plugin once with --vm-image=debian "
                         "(scripts/demo does) and start this again")
    return directory


def domain_xml(name: str, image: Path, overlay: Path, console: Path, netdev: str, public_key: str,
               memory: int, label: str) -> str:
    """What a user writes into domain.xml (built with ElementTree here, so every value is escaped)."""
    domain = ET.Element("domain", {"type": "qemu", "xmlns:qemu": "http://libvirt.org/schemas/domain/qemu/1.0"})

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
        element = ET.SubElement(parent, tag, attrib)
        element.text = text
        return element

    sub(domain, "name", name)
    sub(domain, "memory", str(memory), unit="MiB")
    sub(domain, "vcpu", "1")
    os_ = sub(domain, "os")
    sub(os_, "type", "hvm", arch="x86_64", machine="pc")
    sub(os_, "kernel", str(image / "vmlinuz"))
    sub(os_, "initrd", str(image / "initrd.img"))
    sub(os_, "cmdline", (image / "cmdline").read_text().strip())
    sub(os_, "smbios", mode="sysinfo")
    oem = sub(sub(domain, "sysinfo", type="smbios"), "oemStrings")
    sub(oem, "entry", f"io.systemd.credential:ssh.authorized_keys.root={public_key}")
    features = sub(domain, "features")
    sub(features, "acpi")
    sub(features, "apic")
    devices = sub(domain, "devices")
    disk = sub(devices, "disk", type="file", device="disk")
    sub(disk, "driver", name="qemu", type="qcow2")
    sub(disk, "source", file=str(overlay))
    sub(disk, "target", dev="vda", bus="virtio")
    serial = sub(devices, "serial", type="file")
    sub(serial, "source", path=str(console))
    sub(serial, "target", port="0")
    sub(devices, "memballoon", model="none")
    seclabel = sub(domain, "seclabel", type="static", model="dac", relabel="no")  # QEMU's own user, not root
    sub(seclabel, "label", label)
    commandline = sub(domain, "qemu:commandline")
    for value in ("-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,addr=0x10"):
        sub(commandline, "qemu:arg", value=value)
    return ET.tostring(domain, encoding="unicode")


def shell_way(flake: Path, work: Path, cleanup: contextlib.ExitStack) -> dict[str, float]:
    step = Steps()
    builds: dict[str, Path] = {}
    for attr in ("default", "docker", "portable", "portable-next"):
        with step(f"nix build .#{attr}"):
            builds[attr] = nix_build(flake, attr)

    # local: ./result/bin/web-server & curl
    with step("run + curl (local)"):
        port = free_port()
        server = subprocess.Popen([str(builds["default"] / "bin" / "web-server")],
                                  env={**os.environ, "LISTEN": f"127.0.0.1:{port}"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        cleanup.callback(_stop_group, server)
        curl_until(f"http://127.0.0.1:{port}/", "web-server 1.0")
    with step("stop (local)"):
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()

    # docker load < result && docker run -p 127.0.0.1::3031 && curl
    with step("docker load"):
        loaded = sh(["docker", "load", "-i", str(builds["docker"])]).stdout
        tag = re.search(r"Loaded image: (\S+)", loaded)
        if tag is None:
            raise RuntimeError(f"docker load said: {loaded}")
    container = f"{PREFIX}-web"
    with step("docker run + curl"):
        cleanup.callback(lambda: sh(["docker", "rm", "-f", container], check=False))
        sh(["docker", "run", "-d", "--name", container, "-p", "127.0.0.1::3031", tag.group(1)])
        host_port = sh(["docker", "port", container, "3031/tcp"]).stdout.split()[0].rsplit(":", 1)[1]
        curl_until(f"http://127.0.0.1:{host_port}/", "web-server 1.0")
    with step("docker rm -f"):
        sh(["docker", "rm", "-f", container])

    # a VM: qemu-img create overlay, virsh create, wait for ssh
    image = debian_image()
    qemu = pwd.getpwnam("libvirt-qemu")  # Debian's libvirt runs QEMU as this user
    name = f"{PREFIX}-vm"
    overlay, console, key = work / "vm.qcow2", work / "console.log", work / "id_ed25519"
    ssh_port, web_port = free_port(), free_port()
    known_hosts = work / "known_hosts"
    with step("vm: overlay + key + virsh create"):
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        known_hosts.write_text("".join(f"[127.0.0.1]:{ssh_port} {' '.join(line.split()[:2])}\n"
                                       for line in (image / "hostkeys.pub").read_text().splitlines() if line.strip()))
        sh(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image / "disk.qcow2"), str(overlay)])
        console.write_text("")
        for path in (overlay, console):
            os.chown(path, qemu.pw_uid, qemu.pw_gid)
        for folder in (work, work.parent):  # QEMU's user must reach the overlay and the console
            folder.chmod(0o711)
        netdev = (f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,"
                  f"hostfwd=tcp:127.0.0.1:{web_port}-:3031")
        xml = work / "domain.xml"
        xml.write_text(domain_xml(name, image, overlay, console, netdev, key.with_suffix(".pub").read_text().strip(),
                                  1024, f"+{qemu.pw_uid}:+{qemu.pw_gid}"))
        cleanup.callback(lambda: sh(["virsh", "-c", "qemu:///system", "destroy", name], check=False))
        sh(["virsh", "-c", "qemu:///system", "create", str(xml)])
    ssh = ["ssh", "-i", str(key), "-p", str(ssh_port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
           "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR",
           "root@127.0.0.1"]
    scp = ["scp", "-q", "-i", str(key), "-P", str(ssh_port), "-o", "BatchMode=yes",
           "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR"]
    with step("vm: boot until ssh answers"):
        deadline = time.monotonic() + 300
        while sh([*ssh, "true"], check=False, timeout=30).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no SSH from {name}; console:\n{console.read_text()[-2000:]}")
            time.sleep(1)

    # scp result vm: && ssh vm portablectl attach --now && curl, then the same with reattach
    v1, v2 = raw_of(builds["portable"]), raw_of(builds["portable-next"])
    for what, raw, verb, text in (("attach", v1, "attach", "web-server 1.0"),
                                  ("reattach", v2, "reattach", "web-server 1.1")):
        with step(f"portable {what}: scp"):
            sh([*scp, str(raw), f"root@127.0.0.1:/root/{raw.name}"])
        with step(f"portable {what}: ssh portablectl {verb}"):
            sh([*ssh, f"portablectl {verb} --now --runtime /root/{raw.name}"])
        with step(f"portable {what}: curl"):
            curl_until(f"http://127.0.0.1:{web_port}/", text)
    with step("vm: virsh destroy"):
        sh(["virsh", "-c", "qemu:///system", "destroy", name])
    return step.times


# ---- the plugin way -------------------------------------------------------------------------

TEST_FILE = '''\
"""The seed's workflow through pytest-flake's fixtures (written by benchmarks/scenario.py)."""

import json
import os
import shlex
import time
from contextlib import contextmanager

STEPS = os.environ["PF_SCENARIO_STEPS"]


def record(test, step, seconds, **extra):
    with open(STEPS, "a") as out:  # one short line per write: workers may share the file
        out.write(json.dumps({"test": test, "step": step, "seconds": seconds, **extra}) + "\\n")


@contextmanager
def timed(test, step, guest=None):
    counted = count_guest_commands(guest) if guest is not None else None
    started = time.monotonic()
    try:
        yield
    finally:
        if counted is not None:
            counted["stop"]()
    extra = {}
    if counted is not None:
        extra = {"guest_commands": counted["n"], "guest_seconds": counted["s"], "copies": counted["copies"],
                 "each": counted["each"]}
    record(test, step, time.monotonic() - started, **extra)


def label(cmd):
    """A guest command in a few words: a long ``sh -c SCRIPT`` by its first arguments."""
    argv = shlex.split(cmd)
    if argv[:2] == ["sh", "-c"] and len(argv) > 4 and len(argv[2]) > 60:
        return "sh -c SCRIPT " + " ".join(argv[4:6])
    return cmd[:60]


def count_guest_commands(guest):
    """Counts the guest commands (each one SSH round trip) and copies made through ``guest``, with their times."""
    counted = {"n": 0, "s": 0.0, "copies": 0, "each": []}
    run, copy_to = guest.run, guest.copy_to

    def counting_run(cmd):
        started = time.monotonic()
        try:
            return run(cmd)
        finally:
            counted["n"] += 1
            counted["s"] += time.monotonic() - started
            counted["each"].append([label(cmd), time.monotonic() - started])

    def counting_copy(local, remote):
        started = time.monotonic()
        try:
            return copy_to(local, remote)
        finally:
            counted["copies"] += 1
            counted["each"].append([f"copy_to {remote}", time.monotonic() - started])

    guest.run, guest.copy_to = counting_run, counting_copy

    def stop():
        del guest.run, guest.copy_to

    counted["stop"] = stop
    return counted


def test_builds(flake):
    for attr in ("default", "docker", "portable", "portable-next"):
        with timed("builds", f"nix build .#{attr}"):
            flake.build(attr)


def test_local(flake, http):
    with timed("local", "run + curl (local)"):
        server = flake.run(port=0)
        http.get(server.url("/")).expect(200, contains="web-server 1.0")


def test_docker(docker_image, docker_container, http):
    with timed("docker", "docker load"):
        image = docker_image("docker")
    with timed("docker", "docker run + curl"):
        container = docker_container(image, ports=[3031])
        http.get(container.url(3031, "/")).expect(200, contains="web-server 1.0")


def test_portable(vm, portable_service, http):
    record("portable", f"vm: start ({vm.boot_kind})", vm.ready_seconds)
    url = vm.url(3031, "/")
    with timed("portable", "portable attach: copy + attach", vm):
        service = portable_service(vm, "portable")
    with timed("portable", "portable attach: curl"):
        http.get(url, retry_for=60).expect(200, contains="web-server 1.0")
    with timed("portable", "portable reattach: copy + reattach", vm):
        service.reattach("portable-next")
    with timed("portable", "portable reattach: curl"):
        http.get(url, retry_for=60).expect(200, contains="web-server 1.1")
'''

DURATION = re.compile(r"^\s*([\d.]+)s (setup|call|teardown)\s+\S+::(\S+)")


@dataclass
class PytestRun:
    seconds: float
    rc: int
    steps: list[dict[str, Any]]
    phases: dict[str, float]  # "test_x setup" -> seconds
    tail: str


def run_pytest(flake: Path, work: Path, extra: Sequence[str], label: str, tests: Path | None = None) -> PytestRun:
    """One pytest-flake run over the generated test file (or ``tests``, run from this checkout);
    Ctrl-C reaches it too and it cleans up after itself."""
    steps = work / f"steps-{label}.jsonl"
    steps.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "pytest", f"--flake={flake}", "--vm-image=debian", "-p", "no:cacheprovider",
            "--durations=0", "-q", "-rfE", *extra, str(tests or work / "test_scenario.py")]
    print(f"  $ {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    child = subprocess.Popen(argv, cwd=ROOT if tests else work, env={**os.environ, "PF_SCENARIO_STEPS": str(steps)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = child.communicate(timeout=1800)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGINT)  # pytest tears its fixtures down on an interrupt
        try:
            child.wait(timeout=180)
        except subprocess.TimeoutExpired:
            child.kill()
        raise
    seconds = time.monotonic() - started
    phases: dict[str, float] = {}
    for line in output.splitlines():
        found = DURATION.match(line)
        if found:
            phases[f"{found.group(3)} {found.group(2)}"] = float(found.group(1))
    recorded = [json.loads(line) for line in steps.read_text().splitlines()] if steps.exists() else []
    return PytestRun(seconds, child.returncode, recorded, phases, "\n".join(output.splitlines()[-15:]))


def plugin_steps(run: PytestRun) -> dict[str, float]:
    times: dict[str, float] = {}
    for entry in run.steps:
        times[entry["step"]] = times.get(entry["step"], 0.0) + float(entry["seconds"])
    return times


# ---- report ---------------------------------------------------------------------------------


def ratio(a: float, b: float) -> str:
    return f"{a / b:5.2f}x" if b > 0.005 else "    -"


def row_of(name: str) -> str:
    """The row of the comparison a step belongs to (the two ways split some steps differently)."""
    if name.startswith("nix build"):
        return "nix build (4 outputs)"
    if name in ("stop (local)", "docker rm -f", "vm: virsh destroy"):
        return "clean-up"
    if name.startswith("vm: "):
        return "vm: start to SSH"
    for what in ("attach", "reattach"):
        if name.startswith(f"portable {what}:") and not name.endswith("curl"):
            return f"portable {what}: copy + {what}"
    return name


def print_comparison(shell: dict[str, float], shell_total: float, plugin: PytestRun) -> None:
    rows: dict[str, list[float]] = {}
    for name, seconds in shell.items():
        rows.setdefault(row_of(name), [0.0, 0.0])[0] += seconds
    for name, seconds in plugin_steps(plugin).items():
        rows.setdefault(row_of(name), [0.0, 0.0])[1] += seconds
    rows.setdefault("clean-up", [0.0, 0.0])[1] = sum(v for k, v in plugin.phases.items() if k.endswith(" teardown"))
    boot = next((e["step"] for e in plugin.steps if e["step"].startswith("vm: start")), "")
    print(f"\n{'step':<40} {'shell':>8} {'plugin':>8}  shell/plugin")
    for name, (a, b) in rows.items():
        note = {"vm: start to SSH": f"  (shell: a cold boot; plugin: {boot.removeprefix('vm: start ')})",
                "clean-up": "  (plugin: the tests' teardowns)"}.get(name, "")
        print(f"{name:<40} {a:7.2f}s {b:7.2f}s  {ratio(a, b)}{note}")
    for what in ("attach", "reattach"):
        a = sum(v for k, v in shell.items() if k.startswith(f"portable {what}:"))
        b = sum(v for k, v in plugin_steps(plugin).items() if k.startswith(f"portable {what}:"))
        print(f"{f'portable {what}, copy in to HTTP 200':<40} {a:7.2f}s {b:7.2f}s  {ratio(a, b)}")
    for entry in plugin.steps:
        if "guest_commands" in entry:
            print(f"  plugin {entry['step']}: {entry['guest_commands']} guest commands "
                  f"({entry['guest_seconds']:.2f}s in them), {entry['copies']} copy")
            for what, seconds in entry.get("each", []):
                print(f"    {seconds:6.2f}s  {what}")
    print("\nplugin per test (--durations=0):")
    for name, seconds in plugin.phases.items():
        print(f"  {name:<30} {seconds:7.2f}s")
    print(f"\nwhole workflow: shell {shell_total:.2f}s, plugin {plugin.seconds:.2f}s (one pytest run, "
          f"exit code {plugin.rc}); ratio shell/plugin {ratio(shell_total, plugin.seconds).strip()}")


def interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # a kill cleans up the way Ctrl-C does


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flake", type=Path, default=ROOT / "examples" / "offline")
    parser.add_argument("--no-xdist", action="store_true", help="skip the -n 2 against -n 0 part")
    parser.add_argument("--no-shell", action="store_true", help="skip the shell way (plugin runs only)")
    parser.add_argument("--xdist-suite", choices=("example", "scenario"), default="example",
                        help="what -n 2 and -n 0 run: the flake's own tests/ (default) or the generated file")
    args = parser.parse_args()
    flake = args.flake.resolve()
    if "DOCKER_HOST" not in os.environ:
        env_file = Path(os.environ.get("PYTEST_FLAKE_ENV_FILE", "/run/pytest-flake/env"))
        if env_file.is_file():  # as scripts/demo does: the machine's private dockerd
            for line in env_file.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() and not key.startswith("#"):
                    os.environ.setdefault(key.strip(), value.strip().strip('"'))
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (a background job)

    with tempfile.TemporaryDirectory(prefix="pf-bench-scenario-") as tmp:
        work = Path(tmp)
        (work / "test_scenario.py").write_text(TEST_FILE)
        shell: dict[str, float] = {}
        shell_total = 0.0
        if not args.no_shell:
            print("shell way (argv lists, one step at a time):", flush=True)
            (work / "shell").mkdir()
            started = time.monotonic()
            with contextlib.ExitStack() as shell_cleanup:
                shell = shell_way(flake, work / "shell", shell_cleanup)
            shell_total = time.monotonic() - started
        print("\nplugin way (one pytest-flake run, -n 0 when pytest-xdist is installed):", flush=True)
        try:
            import xdist  # noqa: F401

            have_xdist = True
        except ImportError:
            have_xdist = False
        single = run_pytest(flake, work, ["-n", "0"] if have_xdist else [], "n0")
        for entry in single.steps:
            print(f"  plugin {entry['step']:<34} {entry['seconds']:7.2f}s")
        if single.rc != 0:
            print(f"  pytest failed (exit code {single.rc}):\n{single.tail}")
        if shell:
            print_comparison(shell, shell_total, single)
        else:
            print(f"\nplugin run: {single.seconds:.2f}s (exit code {single.rc})")

        if args.no_xdist:
            return single.rc
        if not have_xdist:
            print("\npytest-xdist is not installed: the -n 2 against -n 0 part is skipped "
                  "(pip install pytest-xdist)")
            return single.rc
        first_rc = single.rc
        suite = flake / "tests" if args.xdist_suite == "example" and (flake / "tests").is_dir() else None
        if suite is not None:  # several VM tests, so two workers have something to share
            print(f"\nthe example's own tests ({suite.relative_to(ROOT) if suite.is_relative_to(ROOT) else suite}) "
                  "under pytest-xdist, -n 0 then -n 2:", flush=True)
            single = run_pytest(flake, work, ["-n", "0"], "suite-n0", suite)
        else:
            print("\nthe same file under pytest-xdist -n 2:", flush=True)
        double = run_pytest(flake, work, ["-n", "2"], "n2", suite)
        if single.rc != 0:
            print(f"  pytest -n 0 failed (exit code {single.rc}):\n{single.tail}")
        if double.rc != 0:
            print(f"  pytest -n 2 failed (exit code {double.rc}):\n{double.tail}")
        print(f"{'test phase':<32} {'-n 0':>7} {'-n 2':>7}")
        for name in dict.fromkeys([*single.phases, *double.phases]):
            cells = [f"{v:6.2f}s" if v is not None else "      -" for v in (single.phases.get(name),
                                                                         double.phases.get(name))]
            print(f"  {name:<30} {cells[0]} {cells[1]}")
        print(f"-n 0: {single.seconds:.2f}s, -n 2: {double.seconds:.2f}s; "
              f"ratio -n 0 / -n 2 {ratio(single.seconds, double.seconds).strip()} ({os.cpu_count()} cores)")
        return first_rc or single.rc or double.rc


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: what this run started is removed", file=sys.stderr)
        sys.exit(130)
