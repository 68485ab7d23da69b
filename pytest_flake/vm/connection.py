"""The libvirt connection: the URI (this host's daemon or another host's), the lazily imported module,
and removing a domain."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import MissingToolError, VMError
from .common import is_root

if TYPE_CHECKING:
    from ..config import Settings

LOCAL_TRANSPORTS = ("", "unix")


def default_uri(settings: Settings | None) -> str:
    """The libvirt URI: the setting, else ``qemu:///system`` as root and ``qemu:///session`` otherwise."""
    explicit = settings.libvirt_uri if settings is not None else None
    return explicit or ("qemu:///system" if is_root() else "qemu:///session")


def is_remote(uri: str) -> bool:
    """Whether libvirt at ``uri`` runs on another host (it cannot see this machine's files).

    ``qemu:///system``, ``qemu+unix:///session`` and ``test:///default`` are local; a transport
    (``+ssh``, ``+tcp``, ``+tls``, ``+libssh``...) other than ``unix``, or a host name, is remote.
    """
    parts = urlsplit(uri)
    _, _, transport = parts.scheme.partition("+")
    if transport not in LOCAL_TRANSPORTS:
        return True
    return bool(parts.netloc) and transport != "unix"


def ssh_url(uri: str) -> str:
    """The ssh URL of the host behind a remote libvirt URI (for the port tunnels).

    ``qemu+ssh://`` URIs are kept (user, port and ``keyfile`` are ssh's); for ``+tcp`` and ``+tls``
    the port is libvirt's, so only ``ssh://[user@]host`` remains.
    """
    parts = urlsplit(uri)
    if not parts.hostname:
        raise VMError(f"the libvirt URI {uri} names no host", hint="write qemu+ssh://root@HOST/system")
    if parts.scheme.endswith("+ssh"):
        return uri
    user = f"{parts.username}@" if parts.username else ""
    return f"ssh://{user}{parts.hostname}"


def libvirt_module() -> Any:
    try:
        import libvirt
    except ImportError as exc:
        raise MissingToolError(
            "the vm fixtures need libvirt-python",
            hint="pip install 'pytest-flake[vm]' (it builds against libvirt-dev and pkg-config)",
        ) from exc
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions
    return libvirt


def connect(uri: str) -> Any:
    """Open a libvirt connection or raise :class:`VMError` saying how to start the daemon."""
    libvirt = libvirt_module()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        if is_remote(uri):
            raise VMError(
                f"libvirt at {uri} is unreachable: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}",
                hint=f"check that `virsh -c {uri} version` works from here: the host answers ssh (BatchMode, a key "
                "in ~/.ssh/config or the agent, its host key in known_hosts) and runs libvirtd with the QEMU "
                "driver; or pass another --libvirt-uri",
            ) from exc
        raise VMError(
            f"libvirt at {uri} is unreachable: {exc}",
            hint="start it (systemctl start libvirtd, or scripts/setup.d/30-libvirt.sh starts virtlogd and "
            "libvirtd privately) or pass --libvirt-uri",
        ) from exc


def alive_connection(conn: Any) -> bool:
    """Whether a libvirt connection still reaches its daemon (a restarted libvirtd drops every client)."""
    try:
        return bool(conn.isAlive())
    except Exception:
        return False


def current_domain(dom: Any, lookup: Callable[[], Any]) -> Any:
    """``dom``, or the same domain looked up again (``lookup``) when the connection it came from was lost.

    A libvirtd that restarts drops its clients but not its guests: the guest runs on, and a new
    connection finds it by name. A daemon that does not answer yet raises ``libvirtError``/``VMError``.
    """
    libvirt = libvirt_module()
    try:
        dom.isActive()
        return dom
    except libvirt.libvirtError:
        return lookup()


def destroy_domain(dom: Any, *, ignore_errors: bool = False) -> None:
    """Stop a domain if it runs and undefine it; a domain that is already gone is not an error.

    A failing stop raises (unless ``ignore_errors``: the sweep removes what it can); undefining
    never raises (a transient domain is gone once stopped).
    """
    libvirt = libvirt_module()
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as exc:
        if not ignore_errors and exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
    with contextlib.suppress(libvirt.libvirtError):
        dom.undefine()
