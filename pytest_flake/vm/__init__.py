"""Virtual machines through libvirt: images, SSH, port forwards, and warm starts.

A :class:`VMPool` owns the VMs of one test session. ``pool.vm()`` returns a :class:`VM`,
a context manager: entering it starts a guest (a copy-on-write overlay over a cached
base image, QEMU user networking with ``restrict=on`` and forwards bound to 127.0.0.1)
and waits until SSH answers; leaving it removes the domain and its files.

Warm starts: the first VM of an image is booted, then saved (``virDomainSave``) with a
copy of its overlay; later VMs of the same image and size restore that saved state with a
fresh name, fresh ports and a fresh overlay over the saved one, copying nothing (libvirt
reads the save file through a FIFO that begins with the VM's own header), and answer SSH
within seconds instead of half a minute. Anything that goes wrong with a restore falls
back to a cold boot.

Saved states outlive the session: each lives in ``<state>/images/warm/<slot>/`` (the
save file, the overlay it belongs to, the SSH key pair authorised in that guest, its
host keys, and ``state.json`` with everything that makes it valid: the image and its
disk, memory, CPUs, accelerator, libvirt URI, the domain template, the QEMU binary and
version, the libvirt version). The next session's first VM restores it in seconds. A
state whose ``state.json`` does not match is stale: the session boots cold and replaces
it. States are written under a lock into a temporary folder that is renamed into place
when complete; its save file and overlay are read-only from then on, and a state whose
files changed since is refused (dropped: the VM boots cold). Restores read a state in place
under a shared lock on it (several VMs at once), its removal waits for them.
``PYTEST_FLAKE_VM_WARM=0`` turns warm starts off (every VM boots cold, nothing is saved);
deleting ``<state>/images/warm`` drops the states.

Every domain and file carries the session id, so :func:`sweep` can remove what a
killed session left behind. This package never imports pytest; libvirt and paramiko
are imported when first needed.

How a VM starts is passed in: :class:`VMPool` chooses, once and from the libvirt URI, a kind of
:class:`~pytest_flake.vm.launch.Launcher` (this machine's libvirt, or another host's) and hands
each VM its own; the VM never asks which. ``VMPool(..., edit_domain=f)`` has ``f(name, root)``
edit each VM's domain XML in place as the last step before it is defined.

The modules, each one concern (imports only go down this list):

========================  ===============================================================
``common``                where ``vms/`` is, sizes, timed steps
``connection``            the libvirt URI (here or another host) and connection, removing a domain
``streams``               libvirt streams: sparse uploads, bytes in and out, the console reader
``volumes``               the storage pool on another host: pool and volume XML, content ids, the volume sweep
``remotehost``            another host: the pool, base images uploaded once, overlays, ports free there
``seed``                  key pairs, host keys, credentials, cloud-config, the seed (ISO 9660, ``cidata``)
``accel``                 KVM probe, first-boot trial, choosing and describing the accelerator
``domain``                the one domain XML builder and editor (cold boot, restore, a pty console, edits)
``savefile``              libvirt's save-file header (read, rewrite the XML in it), fed through a FIFO
``warm``                  warm states: key, slot, store, the record of one kept on another host
``launch``                :class:`VMConfig`, the :class:`Launcher` protocol (how a VM starts), :class:`Platform`
``local``                 :class:`LocalLauncher`: libvirt here, the VM's files in the session's folder
``remote``                :class:`RemoteLauncher`: libvirt on another host, volumes, console stream, tunnels
``ssh``                   the paramiko client, the testinfra backend adapter
``channel``               the guest agent's virtio-serial channel (``agent.sh``): framing, the 0600 socket, agent or SSH
``qemuuser``              QEMU's unprivileged user and the files it reads, writes, reaches
``machine``               :class:`VM`
``pool``                  :class:`VMPool`, and which launcher a URI calls for
``maintenance``           the sweep and the doctor
========================  ===============================================================
"""

from __future__ import annotations

from .accel import (
    HOST_KERNEL_GLOBS,
    KERNEL_PROGRESS,
    KVM_DEVICE,
    KVM_PROBE_SECONDS,
    KVM_TRIAL,
    KVM_TRIAL_SECONDS,
    cached_probe,
    choose_accel,
    describe_accel,
    host_kernel,
    kernel_progress,
    probe_kernel,
    probe_kvm,
    record_probe,
    watch_kvm_first_boot,
)
from .common import NETDEV_ID, QEMU_NS, RECIPES, GiB, MiB
from .connection import connect, default_uri, destroy_domain, is_remote, ssh_url
from .domain import BootSpec, DomainEdit, boot_xml, netdev, restore_xml
from .launch import Disks, Launcher, Platform, VMConfig
from .local import LocalLauncher
from .machine import VM
from .maintenance import VMComponent, component, doctor, sweep
from .pool import VMPool, launcher_type
from .qemuuser import QemuUser, acl_user_perm, check_readable, grant_search, hand_to_qemu
from .remote import RemoteLauncher
from .savefile import SaveFeed, read_save_header, read_save_xml
from .seed import (
    SKIP_DROPIN,
    HostKey,
    KeyPair,
    cloud_config,
    credential,
    make_seed,
    render_user_data,
    skip_dropin,
    skip_units_command,
)
from .ssh import hostkey_lines_from_console, ssh_client
from .warm import WARM_ENV, Hypervisor, WarmState, WarmStore, boot_log_of, warm_enabled, warm_key, warm_slot

__all__ = [
    "VM", "VMPool", "VMConfig", "VMComponent", "component", "Platform", "KeyPair", "HostKey",
    "QemuUser", "Hypervisor", "Launcher", "LocalLauncher", "RemoteLauncher", "launcher_type", "Disks", "DomainEdit",
    "is_remote", "ssh_url",
    "WarmStore", "WarmState", "BootSpec", "sweep", "doctor",
    "probe_kvm", "probe_kernel", "host_kernel", "choose_accel", "describe_accel",
    "cached_probe", "record_probe", "kernel_progress", "watch_kvm_first_boot", "default_uri", "connect",
    "destroy_domain", "boot_xml",
    "restore_xml", "netdev", "read_save_xml", "read_save_header", "SaveFeed", "credential", "skip_dropin",
    "skip_units_command",
    "cloud_config", "render_user_data", "make_seed", "hostkey_lines_from_console", "ssh_client", "warm_enabled",
    "warm_key", "warm_slot", "boot_log_of", "grant_search", "hand_to_qemu", "check_readable", "acl_user_perm",
    "GiB", "MiB", "NETDEV_ID", "QEMU_NS", "RECIPES", "SKIP_DROPIN", "WARM_ENV", "KVM_DEVICE",
    "KVM_TRIAL", "KVM_TRIAL_SECONDS", "KVM_PROBE_SECONDS", "HOST_KERNEL_GLOBS", "KERNEL_PROGRESS",
]
