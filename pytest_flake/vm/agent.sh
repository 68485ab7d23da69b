#!/bin/bash
# pytest-flake's guest agent: runs the host's commands that arrive on a virtio-serial port (channel.py is
# the host's end). Only bash builtins on the way of a command: a fork (the command's subshell), no exec.
#
#   request: "<id> <timeout ms, 0: none> <length>\n" then <length> bytes of a bash command
#   answer:  "<id> <exit code> <stdout length> <stderr length> <ok|timeout>\n" then stdout's bytes, stderr's
#
# The command runs in a subshell with stdin from /dev/null, its own process group (set -m) and its output
# in files under a tmpfs; a coprocess with a timer (read -t) kills the group when its time is up. Output
# without NUL bytes and under 64 KiB is read back with read; other output is measured and sent by stat
# and head, and removed at once. On EOF (no host connected: after a restore the host's end is a new
# socket) it reads again.
# Usage: agent.sh PORT (a character device), or agent.sh fd (fd 3 is open already; one session).
set -m
export LC_ALL=C HOME=/root USER=root LOGNAME=root SHELL=/bin/bash
port=${1:?usage: agent.sh PORT|fd}
d=${PYTEST_FLAKE_AGENT_DIR:-/run/pytest-flake-agent}
mkdir -p -m 0700 "$d" || exit 1
[[ -p $d/idle ]] || mkfifo -m 0600 "$d/idle" || exit 1
exec 8<>"$d/idle"  # never written: read -t on it sleeps without a fork
cd "$HOME" 2>/dev/null || cd /

timer() {  # "<id> <pgid> <seconds>": kill the group unless "done" comes first
    local id pgid secs line
    while read -r id pgid secs; do
        [[ $id == done ]] && continue
        if ! read -r -t "$secs" line; then
            : >"$d/t.$id"
            kill -KILL -- "-$pgid" 2>/dev/null
        fi
    done
}
coproc TIMER { timer; }
kin=${TIMER[1]} kout=${TIMER[0]}

serve() {  # requests on fd 3 until EOF or a malformed header
    local id ms len cmd o e pid rc state out err sizes fast secs
    while IFS=' ' read -r -u 3 id ms len; do
        [[ $id =~ ^[0-9]+$ && $ms =~ ^[0-9]+$ && $len =~ ^[0-9]+$ ]] || return 1
        cmd=
        if ((len > 0)); then IFS= read -r -d '' -N "$len" -u 3 cmd || return 1; fi
        o=$d/o.$id e=$d/e.$id
        (exec 3>&- 8>&- {kin}>&- {kout}<&- </dev/null; unset LC_ALL; eval "$cmd") >"$o" 2>"$e" &
        pid=$!
        if ((ms > 0)); then
            printf -v secs '%d.%03d' $((ms / 1000)) $((ms % 1000))
            printf '%s %s %s\n' "$id" "$pid" "$secs" >&"$kin"
        fi
        wait "$pid"
        rc=$?
        ((ms > 0)) && printf 'done\n' >&"$kin"
        state=ok
        [[ -e $d/t.$id ]] && state=timeout
        fast=1
        IFS= read -r -d '' -n 65536 out <"$o" && fast=0
        IFS= read -r -d '' -n 65536 err <"$e" && fast=0
        if ((fast)); then
            printf '%s %s %s %s %s\n%s%s' "$id" "$rc" "${#out}" "${#err}" "$state" "$out" "$err" >&3 || return 1
        else
            sizes=$(stat -c %s -- "$o" "$e") || return 1
            printf '%s %s %s %s %s\n' "$id" "$rc" ${sizes//$'\n'/ } "$state" >&3 || return 1
            head -c "${sizes%%$'\n'*}" -- "$o" >&3 && head -c "${sizes##*$'\n'}" -- "$e" >&3 || return 1
            rm -f -- "$o" "$e" &  # big ones go now: /run is a small tmpfs
        fi
        if ((++served % 64 == 0)); then  # names taken now: the next command's files are made later
            files=("$d"/[oet].*)
            rm -f -- "${files[@]}" &
        fi
    done
}

served=0
if [[ $port == fd ]]; then
    serve
    exit
fi
# The port stays open: closing it drops what the host sent meanwhile (a request that came between
# an EOF and the close would be lost); with no host connected every read is EOF.
open=0
while :; do
    if ((open)) || exec 3<>"$port"; then
        open=1
        serve || { exec 3>&-; open=0; }  # a broken frame or write: start on a fresh descriptor
    fi
    read -r -t 0.05 -u 8  # no host yet (every read is EOF), or a broken frame: try again
done
