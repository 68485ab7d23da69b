# shellcheck shell=bash
# Docker for the test suite: Debian's docker.io, and a private daemon when none answers.
#
# Sourced by scripts/setup (which provides apt_install and env_line); also runs on its
# own with bash. Idempotent and quiet when everything is already there. When no daemon
# answers at $DOCKER_HOST (or the client's default), starts a private dockerd whose
# socket, data and exec roots live in the pytest-flake state directory, waits until it
# answers, and records DOCKER_HOST=unix://... in "$PYTEST_FLAKE_ENV_FILE" (KEY=VALUE
# lines the test scripts load); without that variable it prints the line to export.
#
# The daemon runs without iptables and IP masquerading: containers reach nothing
# outside this machine, and the tests publish ports on 127.0.0.1 only (docker-proxy).

pf_docker_setup() {
    local state root sock host pkg
    local -a missing=()
    state="${PYTEST_FLAKE_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/pytest-flake}"
    root="$state/dockerd"
    sock="$root/docker.sock"
    host="unix://$sock"

    pf_docker_say() { echo "setup/docker: $*" >&2; }
    pf_docker_answers() { # pf_docker_answers [HOST]: does a Docker daemon answer there?
        if [ -n "${1:-}" ]; then
            timeout 10 docker --host "$1" version --format '{{.Server.Version}}' >/dev/null 2>&1
        else
            timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
        fi
    }
    pf_docker_record() { # make the endpoint known to the test scripts
        if declare -F env_line >/dev/null; then
            env_line DOCKER_HOST "$1"
        elif [ -n "${PYTEST_FLAKE_ENV_FILE:-}" ]; then
            grep -qxF "DOCKER_HOST=$1" "$PYTEST_FLAKE_ENV_FILE" 2>/dev/null \
                || printf 'DOCKER_HOST=%s\n' "$1" >>"$PYTEST_FLAKE_ENV_FILE"
        else
            pf_docker_say "export DOCKER_HOST=$1"
        fi
    }

    # 1. The packages: the daemon, its runtime, the client.
    if declare -F apt_install >/dev/null; then
        apt_install docker.io containerd runc
    else
        for pkg in docker.io containerd runc; do
            dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
        done
        if [ "${#missing[@]}" -gt 0 ]; then
            pf_docker_say "installing ${missing[*]}"
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        fi
    fi

    # 2. A daemon the user already has (DOCKER_HOST or the default socket): use it.
    if pf_docker_answers "${DOCKER_HOST:-}"; then
        if [ -n "${DOCKER_HOST:-}" ]; then pf_docker_record "$DOCKER_HOST"; fi
        return 0
    fi

    # 3. Our private daemon, started by an earlier run: use it; else start it.
    if ! pf_docker_answers "$host"; then
        mkdir -p "$root/data" "$root/exec"
        if [ -f "$root/dockerd.pid" ] && kill -0 "$(cat "$root/dockerd.pid")" 2>/dev/null; then
            pf_docker_say "dockerd (pid $(cat "$root/dockerd.pid")) runs but does not answer yet; waiting"
        else
            rm -f "$sock" "$root/dockerd.pid"
            pf_docker_say "starting a private dockerd at $host (log: $root/dockerd.log)"
            setsid dockerd \
                --host "$host" \
                --data-root "$root/data" \
                --exec-root "$root/exec" \
                --pidfile "$root/dockerd.pid" \
                --storage-driver overlay2 \
                --iptables=false --ip-masq=false \
                >>"$root/dockerd.log" 2>&1 </dev/null &
        fi
        local tries=0
        until pf_docker_answers "$host"; do
            tries=$((tries + 1))
            if [ "$tries" -gt 120 ]; then
                pf_docker_say "dockerd did not answer at $host within 60s; the end of its log:"
                tail -n 30 "$root/dockerd.log" >&2 || true
                return 1
            fi
            sleep 0.5
        done
    fi
    pf_docker_record "$host"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then # run on its own
    set -euo pipefail
    pf_docker_setup
else
    pf_docker_setup || return 1
fi
