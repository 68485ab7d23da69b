#!/usr/bin/env bash
# Docker for the test suite: Debian's docker.io, and a private daemon when none answers.
#
# Idempotent and quiet when everything is already there. When no daemon answers at
# $DOCKER_HOST (or the client's default), starts a private dockerd whose socket, data
# and exec roots live in the pytest-flake state directory, waits until it answers, and
# records DOCKER_HOST=unix://... in "$PYTEST_FLAKE_ENV_FILE" (KEY=VALUE lines the test
# scripts source); without that variable it prints the line to export.
#
# The daemon runs without iptables and IP masquerading: containers reach nothing
# outside this machine, and the tests publish ports on 127.0.0.1 only (docker-proxy).
set -euo pipefail

say() { echo "setup/docker: $*" >&2; }

state="${PYTEST_FLAKE_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/pytest-flake}"
root="$state/dockerd"
sock="$root/docker.sock"
private_host="unix://$sock"

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v containerd >/dev/null 2>&1 || need_pkgs+=(containerd)
command -v runc >/dev/null 2>&1 || need_pkgs+=(runc)
if ! command -v docker >/dev/null 2>&1; then need_pkgs+=(docker.io); fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    say "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

answers() { # answers HOST: does a Docker daemon answer there?
    if [ -n "$1" ]; then
        timeout 10 docker --host "$1" version --format '{{.Server.Version}}' >/dev/null 2>&1
    else
        timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
    fi
}

record() { # record HOST: make the endpoint known to the test scripts
    local line="DOCKER_HOST=$1"
    if [ -n "${PYTEST_FLAKE_ENV_FILE:-}" ]; then
        touch "$PYTEST_FLAKE_ENV_FILE"
        if ! grep -qxF "$line" "$PYTEST_FLAKE_ENV_FILE"; then
            local kept
            kept=$(grep -v '^DOCKER_HOST=' "$PYTEST_FLAKE_ENV_FILE" || true)
            { [ -z "$kept" ] || printf '%s\n' "$kept"; printf '%s\n' "$line"; } >"$PYTEST_FLAKE_ENV_FILE"
        fi
    else
        say "export $line"
    fi
}

# 1. A daemon the user already has (DOCKER_HOST or the default socket): use it.
if answers "${DOCKER_HOST:-}"; then
    [ -n "${DOCKER_HOST:-}" ] && record "$DOCKER_HOST"
    exit 0
fi

# 2. Our private daemon, started by an earlier run.
if answers "$private_host"; then
    record "$private_host"
    exit 0
fi

# 3. Start it.
mkdir -p "$root/data" "$root/exec"
if [ -f "$root/dockerd.pid" ] && kill -0 "$(cat "$root/dockerd.pid")" 2>/dev/null; then
    say "dockerd (pid $(cat "$root/dockerd.pid")) is running but does not answer yet"
else
    rm -f "$sock" "$root/exec/docker.pid"
    say "starting a private dockerd at $private_host (log: $root/dockerd.log)"
    setsid dockerd \
        --host "$private_host" \
        --data-root "$root/data" \
        --exec-root "$root/exec" \
        --pidfile "$root/dockerd.pid" \
        --storage-driver overlay2 \
        --iptables=false --ip-masq=false \
        >>"$root/dockerd.log" 2>&1 </dev/null &
fi

for _ in $(seq 1 120); do
    if answers "$private_host"; then
        record "$private_host"
        exit 0
    fi
    sleep 0.5
done
say "dockerd did not answer at $private_host within 60s; last lines of its log:"
tail -n 30 "$root/dockerd.log" >&2 || true
exit 1
