"""SSH to a guest: one paramiko client that checks the host key, the banner probe, copies over
SFTP, and the testinfra backend adapter that runs over that one connection."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError, VMError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import paramiko


def hostkey_lines_from_console(text: str) -> tuple[str, ...]:
    """Host keys cloud-init prints between ``-----BEGIN SSH HOST KEY KEYS-----`` markers."""
    match = re.search(r"-----BEGIN SSH HOST KEY KEYS-----(.*?)-----END SSH HOST KEY KEYS-----", text, re.S)
    if not match:
        return ()
    keys = []
    for line in match.group(1).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(("ssh-", "ecdsa-")):
            keys.append(f"{parts[0]} {parts[1]}")
    return tuple(keys)


def ssh_client(port: int, key: Path, hostkeys: tuple[str, ...], timeout: float = 10.0) -> paramiko.SSHClient:
    """One paramiko connection to root@127.0.0.1:port that accepts only the known host keys."""
    import paramiko

    client = paramiko.SSHClient()
    known = client.get_host_keys()
    entry = f"[127.0.0.1]:{port}"
    usable = 0
    for line in hostkeys:
        kind, blob = line.split()[:2]
        try:  # a type paramiko does not know (OpenSSH 10's ssh-mldsa44-ed25519) is never negotiated
            known.add(entry, kind, paramiko.PKey.from_type_string(kind, __import__("base64").b64decode(blob)))
            usable += 1
        except (paramiko.SSHException, paramiko.pkey.UnknownKeyType) as exc:
            log.debug("vm: host key type %s skipped: %s", kind, exc)
    if hostkeys and not usable:
        raise VMError(f"none of the guest's host key types ({', '.join(k.split()[0] for k in hostkeys)}) is one "
                      "paramiko speaks", hint="give the image an ed25519 host key")
    if hostkeys:
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        client.set_missing_host_key_policy(paramiko.WarningPolicy())
    try:
        client.connect(
            "127.0.0.1", port=port, username="root", key_filename=str(key), look_for_keys=False, allow_agent=False,
            timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
        )
    except BaseException:
        # ends paramiko's transport thread now: left running, it logs its own failure (a traceback at
        # ERROR) into the test's captured log after the caller has handled the exception
        client.close()
        raise
    return client


def ssh_banner(port: int) -> bool:
    """Whether an SSH server answers on 127.0.0.1:port (QEMU accepts a forward's connection either way)."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.settimeout(1.0)
            return conn.recv(4) == b"SSH-"
    except OSError:
        return False


class QuietParamiko:
    """While waiting for sshd, paramiko's transport thread logs every refused banner as an error."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("paramiko.transport")
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


@functools.lru_cache(maxsize=1)
def pinned_backend_class() -> type:
    from testinfra.backend.paramiko import ParamikoBackend

    class PinnedParamikoBackend(ParamikoBackend):  # type: ignore[misc]
        """testinfra's paramiko backend on the VM's own connection (host key checked)."""

        def __init__(self, hostspec: str, factory: Callable[[], paramiko.SSHClient]) -> None:
            super().__init__(hostspec)
            self._factory = factory

        @functools.cached_property
        def client(self) -> paramiko.SSHClient:
            return self._factory()

    return PinnedParamikoBackend


def sftp_put(client: paramiko.SSHClient, source: Path, remote: str, *, what: str) -> None:
    """Copy a file or a folder (recursively) to ``remote`` over SFTP; modes are kept."""
    sftp = client.open_sftp()
    try:
        if source.is_dir():
            with contextlib.suppress(OSError):
                sftp.mkdir(remote)
            for path in sorted(source.rglob("*")):
                target = f"{remote.rstrip('/')}/{path.relative_to(source).as_posix()}"
                if path.is_dir():
                    with contextlib.suppress(OSError):
                        sftp.mkdir(target)
                else:
                    sftp.put(str(path), target)
                    sftp.chmod(target, path.stat().st_mode & 0o7777)
            return
        if not source.is_file():
            raise UsageError(f"{what}: {source} does not exist")
        sftp.put(str(source), remote)
        sftp.chmod(remote, source.stat().st_mode & 0o7777)
    finally:
        sftp.close()


def sftp_get(client: paramiko.SSHClient, remote: str, target: Path, *, what: str) -> None:
    """Copy a file or a folder (recursively) from ``remote`` over SFTP; modes are kept."""
    import stat

    sftp = client.open_sftp()
    try:
        try:
            info = sftp.stat(remote)
        except OSError as exc:
            raise UsageError(f"{what}: {remote} does not exist in the guest") from exc

        def get(src: str, dst: Path, mode: int) -> None:
            if stat.S_ISDIR(mode):
                dst.mkdir(parents=True, exist_ok=True)
                for entry in sftp.listdir_attr(src):
                    get(f"{src.rstrip('/')}/{entry.filename}", dst / entry.filename, entry.st_mode or 0)
            else:
                sftp.get(src, str(dst))
                dst.chmod(mode & 0o7777)

        get(remote, target, info.st_mode or 0)
    finally:
        sftp.close()
