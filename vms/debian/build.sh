#!/bin/bash
# Build the pytest-flake Debian bookworm test image, offline-friendly and without mounting.
#
#   build.sh OUTDIR
#
# Writes into OUTDIR (which must not exist yet; the caller renames it into the cache):
#   disk.qcow2     the root file system (ext4, no partition table: root=/dev/vda)
#   vmlinuz        the kernel, initrd.img its initramfs (direct kernel boot)
#   hostkeys.pub   the guest's SSH host public keys, so the host can check them
#   cmdline        the kernel command line to boot with
#
# Everything about the image is in this file and in packages.txt: pytest-flake hashes both,
# so any change here rebuilds the image, and with it any saved state made from it.
# Needs root (debootstrap), debootstrap, mkfs.ext4 (e2fsprogs >= 1.43 for -d), qemu-img.
# DEBIAN_MIRROR overrides the mirror (default http://deb.debian.org/debian).
set -euo pipefail

out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
size=${DEBIAN_IMAGE_SIZE:-4G}

[ "$(id -u)" = 0 ] || { echo "build.sh: debootstrap needs root" >&2; exit 2; }
[ ! -e "$out" ] || { echo "build.sh: $out exists" >&2; exit 2; }

work=$(mktemp -d "${out}.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

packages=$(grep -v '^#' "$here/packages.txt" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')

echo "debootstrap $suite ($packages)" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 40 "$work/debootstrap.log" >&2
    [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 40 "$root/debootstrap/debootstrap.log" >&2
    exit 1
}

echo "configure" >&2
echo pf-debian >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tpf-debian\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
printf '/dev/vda\t/\text4\trw,errors=remount-ro\t0\t1\n' >"$root/etc/fstab"
# The machine id is made at boot; the same file empty is what portable images want too.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/20-wired.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
IPv6AcceptRA=no
LinkLocalAddressing=no
EOF
# QEMU user networking answers DHCP; there is no DNS to reach anyway (restrict=on).
: >"$root/etc/resolv.conf"

# sshd: root by key only (the key comes at boot as an SMBIOS systemd credential); quick.
mkdir -p "$root/etc/ssh/sshd_config.d"
cat >"$root/etc/ssh/sshd_config.d/10-pytest-flake.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
GSSAPIAuthentication no
EOF

chroot "$root" systemctl enable systemd-networkd.service ssh.service serial-getty@ttyS0.service >/dev/null 2>&1
# Nothing on a test guest may wait for a network or a clock that never comes.
for unit in systemd-networkd-wait-online.service systemd-time-wait-sync.service systemd-timesyncd.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# Quiet, fast boot on the serial console.
mkdir -p "$root/etc/systemd/system.conf.d"
printf '[Manager]\nDefaultTimeoutStartSec=30s\nDefaultTimeoutStopSec=10s\n' \
    >"$root/etc/systemd/system.conf.d/10-pytest-flake.conf"

cat "$root"/etc/ssh/ssh_host_*_key.pub >"$work/hostkeys.pub"

# Slim the root: apt lists and caches are not needed in a test guest.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/debootstrap

mkdir "$work/out"
cp "$root"/boot/vmlinuz-* "$work/out/vmlinuz"
cp "$root"/boot/initrd.img-* "$work/out/initrd.img"
mv "$work/hostkeys.pub" "$work/out/hostkeys.pub"
echo "root=/dev/vda rw console=ttyS0,115200 quiet systemd.show_status=auto net.ifnames=1" >"$work/out/cmdline"

echo "mkfs.ext4 -d ($size)" >&2
truncate -s "$size" "$work/disk.raw"
mkfs.ext4 -q -F -L pf-root -d "$root" "$work/disk.raw"
qemu-img convert -q -O qcow2 "$work/disk.raw" "$work/out/disk.qcow2"

mv "$work/out" "$out"
echo "built $out" >&2
