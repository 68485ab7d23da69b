#!/bin/bash
# systemd-nspawn for the systemd_container fixtures (Debian's systemd-container package).
# Containers boot the locally built Debian tree (debootstrap comes with 30-libvirt.sh).
# Idempotent and quiet when everything is already there.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    say "40-nspawn: systemd containers need root; skipping (tests that use them are skipped)"
    exit 0
fi
apt_install systemd-container util-linux debootstrap
