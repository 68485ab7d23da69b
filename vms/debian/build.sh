#!/bin/bash
# Build a pytest-flake Debian test image, offline-friendly and without mounting its disk.
#
#   build.sh OUTDIR [plain|cloud] [bookworm|trixie|sid]
#
# The release (default bookworm) picks the suite: bookworm is Debian 12 (systemd 252, "debian"),
# trixie Debian 13 (systemd 257, "debian-trixie"), sid Debian unstable (systemd 262,
# "debian-sid"); each image boots its own release's kernel.
#
# Writes into OUTDIR (which must not exist yet; the caller renames it into the cache):
#   disk.qcow2     plain: the root file system (ext4, no partition table: root=/dev/vda), grown
#                  into the VM's disk at boot (x-systemd.growfs)
#                  cloud: a disk with one partition (root=/dev/vda1) that cloud-init grows, like
#                  the Arch cloud image (growpart, then resize_rootfs)
#   vmlinuz        the kernel, initrd.img its initramfs (direct kernel boot)
#   hostkeys.pub   the guest's SSH host public keys, so the host can check them (cloud: empty:
#                  the image has no host keys, the plugin hands them over in the cloud-init seed)
#   cmdline        the kernel command line to boot with
#   release        the release it was built from, and the systemd version in it
#
# The cloud variant ("debian-cloud", "debian-trixie-cloud", "debian-sid-cloud") is the nearest
# check of the Arch path that works offline: Debian's cloud-init (packages-cloud.txt) reads the
# same NoCloud seed the Arch image gets, and a stand-in for Arch's pacman-init.service sits in
# /etc/systemd/system, where `systemctl mask` cannot replace it, so the seed must skip it another way.
#
# Packages: a minbase debootstrap, then apt in a chroot installs packages.txt (every release),
# packages-RELEASE.txt (what differs by release) and, for cloud, packages-cloud.txt. apt, because
# `debootstrap --include` does not resolve virtual packages (sid's perl-dbdabi-94 stops it). The
# mirror's unstable is a frozen snapshot whose Release file has expired, so apt is told not to
# check Valid-Until (debootstrap does not check it).
#
# Everything about an image is in this file and in its package lists: pytest-flake hashes them
# (with the release), so any change here rebuilds the image, and with it any saved state made from it.
# Needs root (debootstrap, chroot, mount), debootstrap, mkfs.ext4 (e2fsprogs >= 1.43 for -d), qemu-img.
# DEBIAN_MIRROR overrides the mirror (default http://deb.debian.org/debian).
set -euo pipefail

out=${1:?usage: build.sh OUTDIR [plain|cloud] [bookworm|trixie|sid]}
variant=${2:-plain}
suite=${3:-bookworm}
here=$(cd "$(dirname "$0")" && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
case $suite in
    bookworm|trixie|sid) ;;
    *) echo "build.sh: unknown release $suite (bookworm, trixie or sid)" >&2; exit 2 ;;
esac
lists=("$here/packages.txt")
[ ! -f "$here/packages-$suite.txt" ] || lists+=("$here/packages-$suite.txt")
case $variant in
    plain) size=${DEBIAN_IMAGE_SIZE:-4G} ;;
    cloud) size=${DEBIAN_IMAGE_SIZE:-2G}; lists+=("$here/packages-cloud.txt") ;;
    *) echo "build.sh: unknown variant $variant (plain or cloud)" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "build.sh: debootstrap needs root" >&2; exit 2; }
[ ! -e "$out" ] || { echo "build.sh: $out exists" >&2; exit 2; }

work=$(mktemp -d "${out}.work.XXXXXX")
root=$work/root

# What is mounted below the work folder, deepest first (a bind of /dev must never be removed through).
unmount_all() {
    local target
    awk -v top="$work" '$2 == top || index($2, top "/") == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r target; do umount "$target" 2>/dev/null || umount -l "$target"; done
}
cleanup() {
    unmount_all
    if awk -v top="$work" '$2 == top || index($2, top "/") == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
        echo "build.sh: cannot unmount what is mounted below $work; not removing it" >&2
        return
    fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
# shellcheck source=private-dev.sh
. "$here/private-dev.sh"

packages=$(cat "${lists[@]}" | grep -v '^#' | tr -s ' \n' ' ' | sed 's/^ //; s/ $//')

echo "debootstrap $suite (minbase)" >&2
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 40 "$work/debootstrap.log" >&2
    [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 40 "$root/debootstrap/debootstrap.log" >&2
    exit 1
}

echo "apt-get install ($packages)" >&2
# dracut (sid's initramfs generator, if it is the one) must not build for this host's hardware only
mkdir -p "$root/etc/dracut.conf.d"
printf 'hostonly="no"\n' >"$root/etc/dracut.conf.d/10-pytest-flake.conf"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"  # no daemon starts in the chroot
chmod 755 "$root/usr/sbin/policy-rc.d"
mount -t proc proc "$root/proc"
private_dev "$root"  # never the host's /dev: maintainer scripts would change its nodes
apt=(chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -q -o Acquire::Check-Valid-Until=false
     -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
# shellcheck disable=SC2086  # one word per package
{ "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends $packages; } >"$work/apt.log" 2>&1 || {
    tail -n 40 "$work/apt.log" >&2
    exit 1
}
"${apt[@]}" clean >/dev/null 2>&1
unmount_all
rm -f "$root/usr/sbin/policy-rc.d"
systemd_version=$(chroot "$root" dpkg-query -W -f '${Version}' systemd)

echo "configure" >&2
echo pf-debian >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tpf-debian\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
if [ "$variant" = cloud ]; then
    printf '/dev/vda1\t/\text4\trw,errors=remount-ro\t0\t1\n' >"$root/etc/fstab"
else
    printf '/dev/vda\t/\text4\trw,errors=remount-ro,x-systemd.growfs\t0\t1\n' >"$root/etc/fstab"
fi
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

if [ "$variant" = cloud ]; then
    # No host keys of its own: cloud-init writes the ones the seed carries (ssh_keys).
    rm -f "$root"/etc/ssh/ssh_host_*
    : >"$work/hostkeys.pub"
    # NoCloud only (no probing of cloud metadata services); the network is the .network file above.
    mkdir -p "$root/etc/cloud/cloud.cfg.d"
    printf 'datasource_list: [NoCloud, None]\nnetwork: {config: disabled}\n' \
        >"$root/etc/cloud/cloud.cfg.d/90-pytest-flake.cfg"
    # cloud-init's locale module sets en_US.UTF-8 (its default, as on Arch): have it generated.
    echo 'en_US.UTF-8 UTF-8' >"$root/etc/locale.gen"
    chroot "$root" locale-gen >/dev/null
    # A stand-in for Arch's first-boot unit: a file in /etc that mask refuses, and that fails if run.
    cat >"$root/etc/systemd/system/pacman-init.service" <<'UNIT'
[Unit]
Description=Stand-in for Arch's pacman-init.service (the seed must skip it)
ConditionFirstBoot=yes

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'echo "pacman-init ran: the seed did not skip it" >&2; exit 1'

[Install]
WantedBy=multi-user.target
UNIT
    chroot "$root" systemctl enable pacman-init.service >/dev/null 2>&1
else
    cat "$root"/etc/ssh/ssh_host_*_key.pub >"$work/hostkeys.pub"
fi

# Slim the root: apt lists and caches are not needed in a test guest.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/debootstrap

mkdir "$work/out"
cp "$root"/boot/vmlinuz-* "$work/out/vmlinuz"
cp "$root"/boot/initrd.img-* "$work/out/initrd.img"
chmod 644 "$work/out/vmlinuz" "$work/out/initrd.img"  # QEMU's user reads them (dracut writes its initrd 0600)
mv "$work/hostkeys.pub" "$work/out/hostkeys.pub"
rootdev=/dev/vda
[ "$variant" = plain ] || rootdev=/dev/vda1
printf 'release=%s\nsystemd=%s\n' "$suite" "$systemd_version" >"$work/out/release"
echo "root=$rootdev rw console=ttyS0,115200 quiet systemd.show_status=auto net.ifnames=1" >"$work/out/cmdline"

echo "mkfs.ext4 -d ($size)" >&2
truncate -s "$size" "$work/root.raw"
mkfs.ext4 -q -F -L pf-root -d "$root" "$work/root.raw"
if [ "$variant" = cloud ]; then
    # One partition from 1 MiB to the end, as cloud images are laid out; growpart moves its end.
    bytes=$(stat -c %s "$work/root.raw")
    truncate -s $((bytes + 1048576)) "$work/disk.raw"
    printf 'label: dos\nstart=2048, type=83\n' | sfdisk -q "$work/disk.raw"
    dd if="$work/root.raw" of="$work/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
    rm -f "$work/root.raw"
else
    mv "$work/root.raw" "$work/disk.raw"
fi
qemu-img convert -q -O qcow2 "$work/disk.raw" "$work/out/disk.qcow2"

mv "$work/out" "$out"
echo "built $out" >&2
