"""The one builder of domain XML, with ElementTree, for a cold boot and for a restore.

A cold boot starts from the base document ``vms/domain.xml``; a restore starts from the XML
stored in a saved state. Both then get this VM's name, a new UUID, the session, the overlay,
the console and the user network with its forwards through :func:`_place`. Every value is an
element's text or an attribute, so ElementTree escapes all of it.

A user's :data:`DomainEdit` (``edit_domain`` of :class:`~pytest_flake.vm.VMPool`) gets the cold
boot's document last, just before it is defined (:func:`edited`); :func:`edit_fingerprint` says
what it does to a reference document, so a warm state is only restored into a VM edited the same way.
"""

from __future__ import annotations

import copy
import hashlib
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import VMError
from ..session import PREFIX
from .common import AGENT_PORT, NETDEV_ID, QEMU_NS, RECIPES

# edits a domain in place before it is defined: (the VM's name, the root <domain> element)
DomainEdit = Callable[[str, ET.Element], None]


def netdev(ssh_port: int, forwards: dict[int, int] | None = None) -> str:
    """QEMU's ``-netdev`` value: user networking, ``restrict=on``, forwards bound to 127.0.0.1 only."""
    rules = [f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22"]
    rules += [f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in (forwards or {}).items()]
    return ",".join([f"user,id={NETDEV_ID},restrict=on", *rules])


@dataclass(frozen=True)
class BootSpec:
    """What a cold boot's domain is made of (the rest comes from the base document)."""

    name: str
    session: str
    image_key: str
    accel: str  # "kvm" or "tcg"
    memory: int  # MiB
    cpus: int
    overlay: Path
    console: Path | None  # None: a pty read through libvirt (a remote host: see remote.py)
    netdev: str
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    oem_strings: tuple[str, ...] = ()
    seed: Path | None = None
    seclabel: str | None = None  # QEMU's user as libvirt's DAC label (``+UID:+GID``); None: no seclabel
    agent: Path | None = None  # the host's end of the agent's virtio-serial port (channel.py); None: no port
    template: Path = field(default_factory=lambda: RECIPES / "domain.xml")


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    element.text = text
    return element


def _need(root: ET.Element, path: str, what: str) -> ET.Element:
    element = root.find(path)
    if element is None:
        raise VMError(f"{what} has no {path}")
    return element


def console_to_pty(root: ET.Element) -> None:
    """Make a domain's serial port a pty with a ``<console>`` on it (read through libvirt, not a file)."""
    devices = root.find("devices")
    serial = root.find("devices/serial")
    if devices is None or serial is None:
        raise VMError("the domain has no serial port")
    serial.set("type", "pty")
    serial.attrib.pop("tty", None)
    for child in serial.findall("source") + serial.findall("log"):
        serial.remove(child)
    consoles = devices.findall("console")
    for console in consoles:  # a saved domain's console keeps its alias; the pty it had is gone
        console.set("type", "pty")
        console.attrib.pop("tty", None)
        for child in console.findall("source") + console.findall("log"):
            console.remove(child)
    if not consoles:
        console = ET.Element("console", {"type": "pty"})
        _sub(console, "target", type="serial", port="0")
        devices.insert(list(devices).index(serial) + 1, console)


def drop_backing_chain(root: ET.Element) -> None:
    """Remove the ``<backingStore>`` of the main disk: libvirt probes the new overlay's chain instead."""
    disk = root.find("./devices/disk[@device='disk']")
    if disk is not None:
        for store in disk.findall("backingStore"):
            disk.remove(store)


def agent_channel(path: Path) -> ET.Element:
    """The agent's virtio-serial port, its host end a unix socket at ``path`` (libvirt binds it)."""
    channel = ET.Element("channel", {"type": "unix"})
    _sub(channel, "source", mode="bind", path=str(path))
    _sub(channel, "target", type="virtio", name=AGENT_PORT)
    return channel


def _place(root: ET.Element, *, name: str, overlay: Path, console: Path | None, netdev: str, session: str | None,
           what: str, new_chain: bool = False, agent: Path | None = None) -> str:
    """Give a domain this VM's name, a new UUID, session, overlay, console, network and agent socket; the XML.

    ``console=None``: the serial port is a pty with a ``<console>``, read through libvirt (another host).
    ``new_chain``: the overlay's backing chain differs from the saved one (libvirt probes it).
    ``agent``: where the agent's port (when the domain has one) binds its socket.
    """
    if session is not None:
        for tag in ("title", "description"):
            element = root.find(tag)
            if element is not None and element.text:
                element.text = re.sub(rf"{PREFIX}[0-9a-f]+", session, element.text)
    for tag, value in (("name", name), ("uuid", str(uuid.uuid4()))):
        element = root.find(tag)
        if element is None:
            raise VMError(f"{what} has no <{tag}>")
        element.text = value
    disk = root.find("./devices/disk[@device='disk']/source")
    serial = root.find("./devices/serial/source") if console is not None else root.find("./devices/serial")
    if disk is None or serial is None:
        raise VMError(f"{what} has no disk or serial source")
    disk.set("file", str(overlay))
    if console is not None:
        serial.set("path", str(console))
    else:
        console_to_pty(root)
    if new_chain:
        drop_backing_chain(root)
    source = root.find(f"./devices/channel/target[@name='{AGENT_PORT}']/../source")
    if agent is not None and source is not None:
        source.set("path", str(agent))
    for arg in root.findall(f"./{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg"):
        if arg.get("value", "").startswith(f"user,id={NETDEV_ID},"):
            arg.set("value", netdev)
            break
    else:
        raise VMError(f"{what} has no user network")
    # Live-only elements of a saved XML (the monitor's aliases stay; the id must go).
    root.attrib.pop("id", None)
    return ET.tostring(root, encoding="unicode")


def boot_xml(spec: BootSpec) -> str:
    """The domain XML of a cold boot: the base document filled in from ``spec``."""
    ET.register_namespace("qemu", QEMU_NS)
    what = f"the domain template {spec.template}"
    root = ET.parse(spec.template).getroot()
    root.set("type", "kvm" if spec.accel == "kvm" else "qemu")
    _need(root, "title", what).text = f"pytest-flake VM of session {spec.session}"
    _need(root, "description", what).text = f"pytest-flake session={spec.session} image={spec.image_key}"
    _need(root, "memory", what).text = str(int(spec.memory))
    _need(root, "vcpu", what).text = str(int(spec.cpus))
    os_element = _need(root, "os", what)
    boot: list[ET.Element] = []
    if spec.kernel is not None:
        boot.append(ET.Element("kernel"))
        boot[-1].text = str(spec.kernel)
        boot.append(ET.Element("initrd"))
        boot[-1].text = str(spec.initrd) if spec.initrd is not None else ""
        boot.append(ET.Element("cmdline"))
        boot[-1].text = spec.cmdline or ""
    else:
        boot.append(ET.Element("boot", {"dev": "hd"}))
    position = list(os_element).index(_need(os_element, "type", what)) + 1
    for offset, element in enumerate(boot):
        os_element.insert(position + offset, element)
    oem = _need(root, "sysinfo/oemStrings", what)
    for entry in spec.oem_strings:
        _sub(oem, "entry", entry)
    devices = _need(root, "devices", what)
    if spec.seed is not None:
        disk = ET.Element("disk", {"type": "file", "device": "disk"})
        _sub(disk, "driver", name="qemu", type="raw")
        _sub(disk, "source", file=str(spec.seed))
        _sub(disk, "target", dev="vdb", bus="virtio")
        _sub(disk, "readonly")
        position = list(devices).index(_need(devices, "disk[@device='disk']", what)) + 1
        devices.insert(position, disk)
    if spec.seclabel is not None:
        # libvirt's DAC model with its own unprivileged user, never root; relabel='no': the shared base
        # images stay root's and read-only, each VM's own files are handed to QEMU's user beforehand.
        seclabel = ET.Element("seclabel", {"type": "static", "model": "dac", "relabel": "no"})
        _sub(seclabel, "label", spec.seclabel)
        root.insert(list(root).index(devices) + 1, seclabel)
    if spec.agent is not None:
        devices.insert(list(devices).index(_need(devices, "serial", what)) + 1, agent_channel(spec.agent))
    return _place(root, name=spec.name, overlay=spec.overlay, console=spec.console, netdev=spec.netdev,
                  session=None, what=what, agent=spec.agent)


def restore_xml(saved: str, *, name: str, overlay: Path, console: Path | None, netdev: str,
                session: str | None = None, new_chain: bool = False, keep_uuid: bool = False,
                agent: Path | None = None) -> str:
    """The XML of a saved state, given to a new VM (``session``: the state may be an earlier session's).

    ``keep_uuid``: the same guest comes back (libvirt's restore accepts other XML only with its UUID).
    ``agent``: this VM's own socket for the agent's port (when the saved domain has one).
    """
    ET.register_namespace("qemu", QEMU_NS)
    root = ET.fromstring(saved)
    uuid_text = root.findtext("uuid")
    xml = _place(root, name=name, overlay=overlay, console=console, netdev=netdev, session=session,
                 what="saved domain XML", new_chain=new_chain, agent=agent)
    if keep_uuid and uuid_text:
        root = ET.fromstring(xml)
        element = root.find("uuid")
        assert element is not None
        element.text = uuid_text
        xml = ET.tostring(root, encoding="unicode")
    return xml



def edited(xml: str, name: str, edit: DomainEdit | None) -> str:
    """``xml`` after ``edit(name, root)`` changed it in place (the last step before the domain is defined)."""
    if edit is None:
        return xml
    ET.register_namespace("qemu", QEMU_NS)
    root = ET.fromstring(xml)
    edit(name, root)
    return ET.tostring(root, encoding="unicode")


_REFERENCE_UUID = "00000000-0000-4000-8000-000000000000"


def edit_fingerprint(spec: BootSpec, edit: DomainEdit | None) -> str:
    """What ``edit`` does to the cold-boot document of ``spec`` (fixed session, paths and ports): ``""`` when
    nothing.

    A warm state is the guest of an edited domain: its key carries this, so a VM whose edit differs
    (or a VM without one) never restores it. The document's name and UUID do not count; ``spec``'s
    OEM strings should not hold a session's key.
    """
    if edit is None:
        return ""
    fixed = Path("/pf-reference")
    reference = replace(spec, session=f"{PREFIX}00000000", overlay=fixed / "overlay.qcow2", netdev=netdev(0),
                        console=fixed / "console.log" if spec.console is not None else None,
                        seed=fixed / "seed.img" if spec.seed is not None else None,
                        agent=fixed / "vm.agent" if spec.agent is not None else None)
    root = ET.fromstring(boot_xml(reference))
    untouched = copy.deepcopy(root)
    edit(spec.name, root)
    texts = []
    for document in (untouched, root):
        for tag, value in (("name", "pf-reference"), ("uuid", _REFERENCE_UUID)):
            element = document.find(tag)
            if element is not None:
                element.text = value
        texts.append(ET.tostring(document, encoding="unicode"))
    if texts[0] == texts[1]:
        return ""
    return hashlib.sha256(texts[1].encode()).hexdigest()[:16]
