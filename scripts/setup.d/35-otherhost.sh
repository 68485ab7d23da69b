#!/bin/bash
# The "other host" of the integration tests (tests/integration/otherhost.py): the OpenSSH
# server binary, installed WITHOUT a host sshd. The tests start their own sshd inside a network
# namespace of their own; nothing may listen on port 22 of this machine.
# Idempotent and quiet when everything is already there.
set -euo pipefail

sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)

packages=(openssh-server openssh-client iproute2 util-linux)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "35-otherhost: installing ${missing[*]} (no sshd is started on this host)"
    # policy-rc.d exiting 101 tells invoke-rc.d that no service may start during the install
    policy=/usr/sbin/policy-rc.d
    made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 0755 "$policy"
        made_policy=1
    fi
    "${sudo[@]}" apt-get update -qq
    rc=0
    DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 "${sudo[@]}" apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
    [ -z "$made_policy" ] || "${sudo[@]}" rm -f "$policy"
    [ "$rc" -eq 0 ] || exit "$rc"
fi

# Whatever still started a host sshd (systemd units, an init script): stop it and keep it off.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    for unit in ssh.service ssh.socket; do
        "${sudo[@]}" systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
fi
if [ -x /etc/init.d/ssh ] && command -v update-rc.d >/dev/null 2>&1; then
    "${sudo[@]}" update-rc.d ssh disable >/dev/null 2>&1 || true
fi
# an sshd listening on this host's port 22 (not one of the tests' own, which listen in their namespace)
if pid=$(ss -Hltnp 'sport = :22' 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2) && [ -n "$pid" ]; then
    if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/sbin/sshd ]; then
        echo "35-otherhost: stopping the host sshd (pid $pid) that the install started"
        "${sudo[@]}" kill "$pid" || true
    fi
fi
exit 0
