"""What a guest gets handed at boot: the session's SSH key pair, a host key made for it,
systemd credentials (SMBIOS strings), and the cloud-init NoCloud seed disk.

The seed is an ISO 9660 volume labelled ``cidata`` made in Python (pycdlib), with Rock Ridge and
Joliet names so cloud-init finds ``user-data`` and ``meta-data`` under those names; no host tool.
"""

from __future__ import annotations

import io
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._host import write_private
from ..errors import MissingToolError
from .common import RECIPES


@dataclass(frozen=True)
class KeyPair:
    """The session's SSH key pair (ed25519, OpenSSH format)."""

    private: Path
    public: str

    @classmethod
    def create(cls, directory: Path, comment: str) -> KeyPair:
        """Make a new key pair in ``directory`` (or reuse the one there)."""
        from cryptography.hazmat.primitives import serialization as ser
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        private = directory / "id_ed25519"
        public = directory / "id_ed25519.pub"
        if not private.is_file():
            key = Ed25519PrivateKey.generate()
            write_private(private, key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()))
            text = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
            public.write_text(f"{text} {comment}\n")
        return cls(private=private, public=public.read_text().strip())


def credential(name: str, value: str) -> str:
    """An SMBIOS type-11 string carrying a systemd credential (binary form when not one line)."""
    if "\n" in value or "," in value:
        import base64

        return f"io.systemd.credential.binary:{name}={base64.b64encode(value.encode()).decode()}"
    return f"io.systemd.credential:{name}={value}"


SKIP_DROPIN = "50-pytest-flake-skip.conf"


def skip_dropin(unit: str) -> str:
    return f"[Unit]\nConditionPathExists=/run/pytest-flake-never-{unit}\n"


@dataclass(frozen=True)
class HostKey:
    """An SSH host key pair made for one guest (ed25519): handed over in the seed, checked from the start."""

    private: str  # OpenSSH PEM
    public: str  # "ssh-ed25519 AAAA..."

    @classmethod
    def generate(cls) -> HostKey:
        from cryptography.hazmat.primitives import serialization as ser
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()).decode()
        public = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
        return cls(private=private, public=public)


def skip_units_command(units: tuple[str, ...]) -> list[str]:
    """A bootcmd entry that skips ``units`` on images whose systemd predates unit drop-in credentials (256).

    ``systemctl mask`` refuses a unit whose file is in /etc (Arch's ``pacman-init.service``), so each
    unit gets a runtime drop-in with a condition that never holds, systemd reloads, and a unit that
    is already waiting (``systemd-time-wait-sync``) is stopped. Never fails: a unit may not exist.
    """
    lines = []
    for unit in units:
        folder = shlex.quote(f"/run/systemd/system/{unit}.d")
        lines.append(f"mkdir -p {folder} && printf %s {shlex.quote(skip_dropin(unit))} > {folder}/{SKIP_DROPIN}")
    lines.append("systemctl daemon-reload")
    for unit in units:
        quoted = shlex.quote(unit)
        lines.append(f'[ "$(systemctl show -P ActiveState {quoted} 2>/dev/null)" != activating ] || '
                     f"systemctl stop --no-block {quoted}")
    lines.append("true")
    return ["sh", "-c", "\n".join(lines)]


def cloud_config(public_key: str, host_key: HostKey, skip_units: tuple[str, ...]) -> dict[str, Any]:
    """The cloud-config of a cloud image's seed: ``vms/arch/cloud-config.json`` plus this VM's keys and units."""
    config: dict[str, Any] = json.loads((RECIPES / "arch" / "cloud-config.json").read_text())
    config.pop("comment", None)
    config["users"] = [{"name": "root", "lock_passwd": True, "ssh_authorized_keys": [public_key]}]
    config["ssh_keys"] = {"ed25519_private": host_key.private, "ed25519_public": host_key.public}
    if skip_units:
        config["bootcmd"] = [skip_units_command(skip_units)]
    return config


def render_user_data(config: Mapping[str, Any]) -> str:
    """``#cloud-config`` followed by the config as JSON (YAML 1.2 accepts JSON; no YAML library needed)."""
    return "#cloud-config\n" + json.dumps(config, indent=2, sort_keys=True) + "\n"


SEED_LABEL = "cidata"  # what cloud-init's NoCloud looks for (it takes CIDATA too)


def make_seed(path: Path, user_data: str, instance: str) -> Path:
    """A cloud-init NoCloud seed (an ISO 9660 volume labelled ``cidata``) with ``user-data`` and ``meta-data``.

    Written 0600 from the start: ``user-data`` holds the guest's host key.
    """
    try:
        import pycdlib
    except ImportError as exc:
        raise MissingToolError("a cloud-init seed needs the Python package pycdlib",
                               hint="pip install 'pytest-flake[vm]' (or pip install pycdlib)") from exc
    files = {
        "user-data": user_data.encode(),
        "meta-data": f"instance-id: {instance}\nlocal-hostname: pf-vm\n".encode(),
    }
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=SEED_LABEL, joliet=3, rock_ridge="1.09")
    try:
        for name, data in files.items():
            # ISO 9660's own names are 8.3 upper case; Rock Ridge and Joliet carry the real ones
            iso.add_fp(io.BytesIO(data), len(data), f"/{name.replace('-', '').upper()[:8]}.;1", rr_name=name,
                       joliet_path=f"/{name}")
        image = io.BytesIO()
        iso.write_fp(image)
    finally:
        iso.close()
    path.unlink(missing_ok=True)
    write_private(path, image.getvalue())
    return path
