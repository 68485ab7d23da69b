"""Another host, made on this machine: a network namespace with an sshd, a dockerd and a libvirtd.

:func:`other_host` makes, for the length of a ``with`` block:

* a network namespace ``pf-oh-<random>`` (``ip netns add``), with its own loopback and a veth
  pair carrying a /30 of 10.213.x.y of our own (nothing routed anywhere else);
* a private mount namespace (``nsenter --net=/run/netns/NAME unshare --mount --propagation
  private``; ``ip netns exec`` would mount a fresh ``/sys`` and hide ``/sys/fs/cgroup``) with
  its own ``/run``, ``/tmp``, ``/var/lib/docker``, ``/var/lib/libvirt``, ``/var/log/libvirt``,
  ``/var/cache/libvirt``, ``/etc/libvirt`` (a copy), and tmpfs over ``/nix`` and over the
  pytest-flake state directory, so that no path of ours exists on its side;
* in it, started by a small supervisor: ``sshd`` (its own host key and config, root login
  by a key made here), ``dockerd`` (``/var/run/docker.sock`` there) and ``virtlogd`` + ``libvirtd``
  (``qemu:///system`` there, its sockets in its own ``/run/libvirt``).

The user side is a folder (:attr:`OtherHost.ssh_dir`) holding ``config`` (``Host pf-otherhost``:
the namespace's address, ``User root``, the key, ``UserKnownHostsFile`` with the host key,
``StrictHostKeyChecking yes``), ``id_ed25519`` and ``known_hosts``. :meth:`OtherHost.user_argv`
wraps a command so that it runs in a mount namespace of its own where ``~/.ssh`` is that folder,
the way a user's ssh, the Docker SDK and libvirt would see it.

The end of the block removes it all (supervisor, daemons, namespace, veth, files). A run that
was killed leaves a namespace whose owner pid is dead: the next :func:`other_host` removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_flake.session import alive, start_time, state_dir

PREFIX = "pf-oh-"
ALIAS = "pf-otherhost"
WORK_ROOT = Path("/var/tmp")  # not /tmp: the other host gets a /tmp of its own, and must read its config
NETNS_DIR = Path("/run/netns")


class OtherHostUnavailable(RuntimeError):
    """This machine cannot make the other host (not root, sshd or a tool missing)."""


# ----------------------------------------------------------------------------------------------- the supervisor
# Runs as root inside the new mount namespace (and the network namespace): mounts, then starts the daemons,
# writes ``ready`` (or ``failed``) into the work dir, and on SIGTERM (or when its parent dies) stops them.
SUPERVISOR = r"""
import ctypes, json, os, signal, socket, subprocess, sys, time
cfg = json.loads(sys.argv[1])
work = cfg["work"]
ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the harness died, so do we
def say(name, text):
    with open(os.path.join(work, name + ".tmp"), "w") as f:
        f.write(text)
    os.rename(os.path.join(work, name + ".tmp"), os.path.join(work, name))
children = []
def stop(*_):
    for name, proc in reversed(children):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
try:
    for src, dst in cfg["binds"]:
        os.makedirs(dst, exist_ok=True)
        subprocess.run(["mount", "--bind", src, dst], check=True)
    for dst in cfg["tmpfs"]:
        os.makedirs(dst, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", dst], check=True)
    for d in ("/run/sshd", "/run/libvirt", "/run/docker", "/run/lock"):
        os.makedirs(d, exist_ok=True)
    os.chmod("/tmp", 0o1777)
    socket.sethostname(cfg["hostname"])
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    def start(name, argv):
        log = open(os.path.join(work, "logs", name + ".log"), "ab")
        children.append((name, subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)))
    def answers(check, name, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for other, proc in children:
                if proc.poll() is not None:
                    raise RuntimeError(f"{other} exited with code {proc.returncode}; see logs/{other}.log")
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not answer in {timeout:g}s; see logs/{name}.log")
    def tcp(addr, port):
        with socket.create_connection((addr, port), timeout=1):
            return True
    def unix_http(path):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.") and True
    def unix(path):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            return True
    start("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", cfg["sshd_config"]])
    if cfg["docker"]:
        start("dockerd", ["dockerd", "--host", "unix:///var/run/docker.sock", "--data-root", "/var/lib/docker",
                          "--exec-root", "/run/docker", "--pidfile", "/run/docker.pid", "--storage-driver",
                          "overlay2", "--iptables=false", "--ip-masq=false", "--cgroup-parent", cfg["cgroup"]])
    if cfg["libvirt"]:
        start("virtlogd", ["virtlogd"])
        answers(lambda: unix("/run/libvirt/virtlogd-sock"), "virtlogd")
        start("libvirtd", ["libvirtd"])
    answers(lambda: tcp(cfg["address"], 22), "sshd")
    if cfg["docker"]:
        answers(lambda: unix_http("/var/run/docker.sock"), "dockerd", 90.0)
    if cfg["libvirt"]:
        answers(lambda: unix("/run/libvirt/libvirt-sock"), "libvirtd")
    say("ready", json.dumps({name: proc.pid for name, proc in children}))
except Exception as exc:
    say("failed", f"{type(exc).__name__}: {exc}")
    stop()
while True:
    signal.pause()
"""

# A command run with ``~/.ssh`` replaced by the harness's folder (in a mount namespace of its own).
LAUNCHER = r"""
import os, subprocess, sys
src, dst = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "--bind", src, dst], check=True)
os.execvp(sys.argv[3], sys.argv[3:])
"""


# ----------------------------------------------------------------------------------------------- the host
@dataclass
class OtherHost:
    """The namespace host: its name, addresses, the user's ssh folder, and ways to look inside."""

    name: str
    address: str  # the namespace's end of the veth: sshd listens here
    host_address: str  # our end
    work: Path
    ssh_dir: Path
    supervisor: subprocess.Popen[bytes] | None = None
    pids: dict[str, int] = field(default_factory=dict)
    alias: str = ALIAS

    @property
    def docker_url(self) -> str:
        """``DOCKER_HOST`` for it: ``ssh://pf-otherhost``."""
        return f"ssh://{self.alias}"

    @property
    def libvirt_uri(self) -> str:
        """``--libvirt-uri`` for it: ``qemu+ssh://pf-otherhost/system``."""
        return f"qemu+ssh://{self.alias}/system"

    def user_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run where ``~/.ssh`` is :attr:`ssh_dir` (a private mount namespace; nothing else changes)."""
        home_ssh = user_ssh_dir()
        return ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c", LAUNCHER,
                str(self.ssh_dir), str(home_ssh), *map(str, argv)]

    def inside(self, argv: Sequence[str], *, timeout: float = 120.0,
               input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the other host directly (its network and mount namespaces), not through ssh."""
        assert self.supervisor is not None
        full = ["nsenter", f"--target={self.supervisor.pid}", "--net", "--mount", "--", *map(str, argv)]
        done = subprocess.run(full, input=input, capture_output=True, timeout=timeout)
        return subprocess.CompletedProcess(full, done.returncode, done.stdout.decode(errors="replace"),
                                           done.stderr.decode(errors="replace"))

    def docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The docker CLI against the other host's own daemon (``/var/run/docker.sock`` there)."""
        return self.inside(["docker", "--host", "unix:///var/run/docker.sock", *args])

    def virsh(self, *args: str) -> subprocess.CompletedProcess[str]:
        """virsh against the other host's own libvirtd (``qemu:///system`` there)."""
        return self.inside(["virsh", "-c", "qemu:///system", *args])

    def log(self, daemon: str) -> str:
        """The output of ``sshd``, ``dockerd``, ``virtlogd`` or ``libvirtd`` so far."""
        path = self.work / "logs" / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def user_ssh_dir() -> Path:
    """The ``~/.ssh`` that ssh reads: the user database's home, not ``$HOME`` (which pytester changes)."""
    return Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh"


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed with code {done.returncode}: {done.stderr.strip()}")
    return done


def veth_names(name: str) -> tuple[str, str]:
    """Our end and its end of the other host ``name``'s veth pair (at most 15 characters each)."""
    return f"pfoh{name[len(PREFIX):]}", f"pfohn{name[len(PREFIX):]}"


def _netns_pids(name: str) -> list[int]:
    done = _run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in done.stdout.split()]


def _cgroup_pids(cgroup: str) -> list[int]:
    pids: set[int] = set()
    for controller in Path("/sys/fs/cgroup").iterdir():
        base = controller / cgroup.strip("/")
        if base.is_dir():
            for procs in base.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)


def _remove_cgroups(cgroup: str) -> None:
    for controller in Path("/sys/fs/cgroup").iterdir():
        base = controller / cgroup.strip("/")
        if base.is_dir():
            for sub in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()


def _kill_all(name: str) -> None:
    """Kill everything of the other host ``name``: processes in its network namespace and its containers."""
    for _ in range(20):
        pids = set(_netns_pids(name)) | set(_cgroup_pids(name))
        pids.discard(os.getpid())
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    _remove_cgroups(name)


def remove(name: str) -> None:
    """Remove the other host ``name``: its processes, containers, namespace (and veth) and files."""
    _kill_all(name)
    # our end of the veth: it would go with the namespace, but the kernel removes a namespace's devices later
    _run(["ip", "link", "del", veth_names(name)[0]], check=False)
    if (NETNS_DIR / name).exists():
        _run(["ip", "netns", "del", name], check=False)
    shutil.rmtree(WORK_ROOT / name, ignore_errors=True)


def sweep() -> list[str]:
    """Remove the other hosts whose owner (the test run that made them) is gone; return their names."""
    names = {p.name for p in NETNS_DIR.glob(f"{PREFIX}*")} | {p.name for p in WORK_ROOT.glob(f"{PREFIX}*")}
    removed = []
    for name in sorted(names):
        try:
            pid_s, started = (WORK_ROOT / name / "owner").read_text().split()
            owner_alive = alive(int(pid_s), started)
        except (OSError, ValueError):
            owner_alive = False
        if not owner_alive:
            remove(name)
            removed.append(name)
    return removed


def _pick_subnet() -> ipaddress.IPv4Network:
    used = _run(["ip", "-4", "-o", "addr"]).stdout + _run(["ip", "-4", "route"]).stdout
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.213.{secrets.randbelow(256)}.{4 * secrets.randbelow(64)}/30")
        if not any(str(ip) in used for ip in net):
            return net
    raise OtherHostUnavailable("no free /30 in 10.213.0.0/16 for the other host's veth")


def check_tools() -> None:
    """Raise :class:`OtherHostUnavailable` saying what is missing."""
    if os.geteuid() != 0:
        raise OtherHostUnavailable("the other host needs root (network and mount namespaces)")
    for tool, package in (("/usr/sbin/sshd", "openssh-server"), ("ip", "iproute2"), ("nsenter", "util-linux"),
                          ("unshare", "util-linux"), ("ssh", "openssh-client"), ("ssh-keygen", "openssh-client")):
        if shutil.which(tool) is None:
            raise OtherHostUnavailable(f"{tool} is missing: scripts/setup installs {package} "
                                       f"(scripts/setup.d/35-otherhost.sh)")


def _sshd_config(host: OtherHost, extra: Sequence[str] = ()) -> str:
    keys = host.work / "sshd"
    return "\n".join([
        *extra,  # sshd takes the first value of each keyword: these win
        f"ListenAddress {host.address}",
        "Port 22",
        f"HostKey {keys / 'ssh_host_ed25519_key'}",
        "PidFile /run/sshd.pid",
        f"AuthorizedKeysFile {keys / 'authorized_keys'}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "AllowTcpForwarding yes",
        "AllowStreamLocalForwarding yes",
        "MaxSessions 64",
        "MaxStartups 64:30:128",
        "Subsystem sftp internal-sftp",
        "",
    ])


def _user_files(host: OtherHost, host_pub: str) -> None:
    ssh = host.ssh_dir
    (ssh / "config").write_text("\n".join([
        f"Host {host.alias}",
        f"    HostName {host.address}",
        "    User root",
        "    IdentityFile ~/.ssh/id_ed25519",
        "    IdentitiesOnly yes",
        "    UserKnownHostsFile ~/.ssh/known_hosts",
        "    StrictHostKeyChecking yes",
        "",
    ]))
    key_type, key = host_pub.split()[:2]
    (ssh / "known_hosts").write_text(f"{host.address} {key_type} {key}\n{host.alias} {key_type} {key}\n")
    for path in ssh.iterdir():
        path.chmod(0o600)


@contextlib.contextmanager
def other_host(*, docker: bool = True, libvirt: bool = True, timeout: float = 120.0,
               sshd_options: Sequence[str] = ()) -> Iterator[OtherHost]:
    """Make the other host; remove it (and what killed runs left) at the end. See the module docstring.

    ``sshd_options`` are sshd_config lines that win over the harness's (``AllowTcpForwarding no``).
    """
    check_tools()
    sweep()
    name = f"{PREFIX}{secrets.token_hex(3)}"
    work = WORK_ROOT / name
    net = _pick_subnet()
    ns_addr, our_addr = str(net.network_address + 2), str(net.network_address + 1)
    host = OtherHost(name=name, address=ns_addr, host_address=our_addr, work=work, ssh_dir=work / "user-ssh")
    try:
        for sub in ("sshd", "logs", "user-ssh", "docker"):
            (work / sub).mkdir(parents=True, mode=0o700)
        for sub in ("lib-libvirt", "log-libvirt", "cache-libvirt"):  # 0755 as on a host: QEMU runs as libvirt-qemu
            (work / sub).mkdir(mode=0o755)
        me = os.getpid()
        (work / "owner").write_text(f"{me} {start_time(me)}")
        # keys: the host's, and the user's (authorised for root there)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name} host", "-f",
              str(work / "sshd" / "ssh_host_ed25519_key")])
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name} user", "-f",
              str(host.ssh_dir / "id_ed25519")])
        shutil.copy(host.ssh_dir / "id_ed25519.pub", work / "sshd" / "authorized_keys")
        (work / "sshd" / "sshd_config").write_text(_sshd_config(host, sshd_options))
        _user_files(host, (work / "sshd" / "ssh_host_ed25519_key.pub").read_text())
        # /etc/libvirt, without autostarted networks or pools (they would need bridges and dnsmasq)
        shutil.copytree("/etc/libvirt", work / "etc-libvirt", symlinks=True)
        for autostart in (work / "etc-libvirt").rglob("autostart"):
            shutil.rmtree(autostart, ignore_errors=True)
        # its guests in no cgroup of their own: a guest killed with the host leaves no machine/ cgroup behind here
        with (work / "etc-libvirt" / "qemu.conf").open("a") as qemu_conf:
            qemu_conf.write("\ncgroup_controllers = [ ]\n")
        # the network: a namespace with loopback and one veth carrying our /30
        _run(["ip", "netns", "add", name])
        veth_host, veth_ns = veth_names(name)
        _run(["ip", "link", "add", veth_host, "type", "veth", "peer", "name", veth_ns, "netns", name])
        _run(["ip", "addr", "add", f"{our_addr}/30", "dev", veth_host])
        _run(["ip", "link", "set", veth_host, "up"])
        _run(["ip", "-n", name, "addr", "add", f"{ns_addr}/30", "dev", veth_ns])
        _run(["ip", "-n", name, "link", "set", veth_ns, "up"])
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        # the mount namespace and the daemons
        state = state_dir()
        state.mkdir(parents=True, exist_ok=True)
        binds = [(str(work / "docker"), "/var/lib/docker"), (str(work / "lib-libvirt"), "/var/lib/libvirt"),
                 (str(work / "log-libvirt"), "/var/log/libvirt"), (str(work / "cache-libvirt"), "/var/cache/libvirt"),
                 (str(work / "etc-libvirt"), "/etc/libvirt")]
        config = {"work": str(work), "address": ns_addr, "sshd_config": str(work / "sshd" / "sshd_config"),
                  "docker": docker, "libvirt": libvirt, "hostname": ALIAS, "cgroup": f"/{name}", "binds": binds,
                  "tmpfs": ["/run", "/tmp", "/nix", str(state)]}
        host.supervisor = subprocess.Popen(
            ["nsenter", f"--net={NETNS_DIR / name}", "unshare", "--mount", "--uts", "--propagation", "private", "--",
             sys.executable, "-c", SUPERVISOR, json.dumps(config)],
            stdin=subprocess.DEVNULL, stdout=open(work / "logs" / "supervisor.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not (work / "ready").exists():
            if (work / "failed").exists() or host.supervisor.poll() is not None or time.monotonic() > deadline:
                what = (work / "failed").read_text() if (work / "failed").exists() else "no answer"
                logs = "\n".join(f"--- {d}\n{host.log(d)[-2000:]}" for d in
                                 ("supervisor", "sshd", "dockerd", "virtlogd", "libvirtd"))
                raise RuntimeError(f"the other host {name} did not start: {what}\n{logs}")
            time.sleep(0.05)
        host.pids = json.loads((work / "ready").read_text())
        with _home_ssh_mount_point():
            yield host
    finally:
        if libvirt and host.supervisor is not None and host.supervisor.poll() is None:
            with contextlib.suppress(Exception):  # libvirt's own clean-up of what runs there, before the kill
                for domain in host.virsh("list", "--name").stdout.split():
                    host.virsh("destroy", domain)
        if host.supervisor is not None and host.supervisor.poll() is None:
            host.supervisor.terminate()
            try:
                host.supervisor.wait(60)
            except subprocess.TimeoutExpired:
                host.supervisor.kill()
                host.supervisor.wait()
        remove(name)


HOME_SSH_MARK = ".pytest-flake-otherhost-mountpoint"  # in a ~/.ssh that a harness made (and may remove)


@contextlib.contextmanager
def _home_ssh_mount_point() -> Iterator[Path]:
    """``~/.ssh`` exists while any other host lives: :meth:`OtherHost.user_argv` binds onto it.

    Every live host holds a shared lock; the last one out (the only one that gets the lock
    exclusively) removes the folder if a harness made it, so a run never pulls the mount point
    from under a sibling's. What a killed run left goes at the next run's end.
    """
    home_ssh = user_ssh_dir()
    lock_path = state_dir() / "otherhost-home-ssh.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        if not home_ssh.exists():
            home_ssh.mkdir(mode=0o700, exist_ok=True)
            (home_ssh / HOME_SSH_MARK).touch()
        try:
            yield home_ssh
        finally:
            last = True
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                last = False  # another host still binds onto it
            if last and (home_ssh / HOME_SSH_MARK).exists() and {e.name for e in home_ssh.iterdir()} == {HOME_SSH_MARK}:
                (home_ssh / HOME_SSH_MARK).unlink()
                home_ssh.rmdir()


__all__ = ["ALIAS", "OtherHost", "OtherHostUnavailable", "check_tools", "other_host", "remove", "sweep", "veth_names"]
