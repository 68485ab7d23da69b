"""SSH to a guest: one paramiko client that checks the host key, the banner probe, and the
testinfra backend adapter that runs over that one connection."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

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
    for line in hostkeys:
        kind, blob = line.split()[:2]
        known.add(entry, kind, paramiko.PKey.from_type_string(kind, __import__("base64").b64decode(blob)))
    if hostkeys:
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        client.set_missing_host_key_policy(paramiko.WarningPolicy())
    client.connect(
        "127.0.0.1", port=port, username="root", key_filename=str(key), look_for_keys=False, allow_agent=False,
        timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
    )
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
