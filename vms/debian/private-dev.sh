# shellcheck shell=bash
# private_dev ROOT: a /dev of its own for a chroot at ROOT, on a tmpfs: the character devices
# that apt, dpkg's maintainer scripts, Nix and pytest use, and a devpts instance of its own.
#
# Never the host's /dev bound in: a package's maintainer script then changes the host's device
# nodes with the tree's own user and group ids (seen here: /dev/kvm handed to the host's group
# whose number the tree's kvm group has). Unmount ROOT/dev/pts, then ROOT/dev, when done.
# Sourced by vms/debian/build.sh (part of the image recipe) and scripts/nix-matrix.
private_dev() {
    local dev=$1/dev node name major minor
    mkdir -p "$dev"
    mount -t tmpfs -o mode=0755,nosuid,size=16m pf-dev "$dev"
    for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
        IFS=: read -r name major minor <<<"$node"
        mknod -m 0666 "$dev/$name" c "$major" "$minor"
    done
    mkdir -m 0755 "$dev/pts"
    mkdir -m 1777 "$dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 pf-devpts "$dev/pts"
    ln -s pts/ptmx "$dev/ptmx"
    ln -s /proc/self/fd "$dev/fd"
    ln -s /proc/self/fd/0 "$dev/stdin"
    ln -s /proc/self/fd/1 "$dev/stdout"
    ln -s /proc/self/fd/2 "$dev/stderr"
}
