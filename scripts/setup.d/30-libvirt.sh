#!/bin/bash
# libvirt + QEMU for the vm fixtures: packages, the qemu user, and a daemon if none answers.
# Idempotent and quiet when everything is already there.
set -euo pipefail

# acl: QEMU runs as libvirt's own user, which gets a search-only ACL entry on the folders above
# the image cache. cloud-init: only its offline `cloud-init schema`, which checks the seeds the
# plugin renders (a unit test); it is disabled on this host (/etc/cloud/cloud-init.disabled).
# fdisk: sfdisk partitions the debian-cloud image.
packages=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
          qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client acl fdisk
          cloud-init)
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "30-libvirt: installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# cloud-init is here for its schema check only: it must never configure this host at boot.
if [ -d /etc/cloud ] && [ ! -e /etc/cloud/cloud-init.disabled ]; then
    "${sudo[@]}" touch /etc/cloud/cloud-init.disabled
fi

# Debian's libvirt runs QEMU as libvirt-qemu:kvm; libvirt-daemon-system would create them.
getent group kvm >/dev/null || "${sudo[@]}" groupadd --system kvm
getent group libvirt-qemu >/dev/null || "${sudo[@]}" groupadd --system libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 || "${sudo[@]}" useradd --system --no-create-home --home-dir /var/lib/libvirt \
    --shell /usr/sbin/nologin -g libvirt-qemu -G kvm libvirt-qemu

# QEMU runs in group kvm: without access to /dev/kvm, libvirt probes QEMU's capabilities
# again on every call (about a minute per domain start). udev would set this; do it here.
if [ -c /dev/kvm ] && [ "$(stat -c %G:%a /dev/kvm)" != kvm:660 ]; then
    "${sudo[@]}" chgrp kvm /dev/kvm && "${sudo[@]}" chmod 0660 /dev/kvm
fi

uri=qemu:///system
[ "$(id -u)" = 0 ] || uri=qemu:///session
if virsh -q -c "$uri" version >/dev/null 2>&1; then
    exit 0
fi
if [ "$uri" = qemu:///session ]; then
    exit 0  # the session daemon is started on demand by the client
fi

# No system daemon answers: start one privately (no systemd here, or it is not enabled).
echo "30-libvirt: starting virtlogd and libvirtd"
mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt /run/libvirt
pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d
for _ in $(seq 1 50); do
    virsh -q -c "$uri" version >/dev/null 2>&1 && exit 0
    sleep 0.2
done
echo "30-libvirt: libvirtd does not answer on $uri" >&2
exit 1
