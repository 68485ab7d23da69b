"""Run a command where ``/dev/loop-control`` does not exist (the fault suite's launcher).

    unshare --mount --propagation private python3 nodevloop.py COMMAND...

Inside a private mount namespace (``unshare --mount``: nothing here reaches the host's mounts),
``/dev`` is replaced by a copy on a fresh tmpfs without ``loop-control``; ``/dev/pts`` and
``/dev/shm`` are the host's. Then COMMAND runs there. The copy's nodes are new nodes on that
tmpfs, so removing one never touches the host's ``/dev``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: unshare --mount --propagation private python3 nodevloop.py COMMAND...", file=sys.stderr)
        return 2
    if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
        print("nodevloop: not in a mount namespace of its own (run it under unshare --mount)", file=sys.stderr)
        return 2
    copy = tempfile.mkdtemp(prefix="pf-dev-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", copy], check=True)
    # device nodes and links only: pts and shm come from the host below, loop-control stays out
    subprocess.run(["cp", "-a", "--one-file-system", "/dev/.", copy], check=True)
    os.unlink(os.path.join(copy, "loop-control"))
    subprocess.run(["mount", "--rbind", "/dev/pts", os.path.join(copy, "pts")], check=True)
    subprocess.run(["mount", "--rbind", "/dev/shm", os.path.join(copy, "shm")], check=True)
    subprocess.run(["mount", "--rbind", copy, "/dev"], check=True)
    os.execvp(argv[0], argv)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
