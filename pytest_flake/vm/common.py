"""What every part of the VM package shares: where ``vms/`` is, sizes, timed steps, host commands.

The recipes' place, sizes, steps and host commands are the image store's (:mod:`pytest_flake.images.cache`),
named here for the rest of the package.
"""

from __future__ import annotations

import logging

from ..images.cache import RECIPES, GiB, MiB, hash_files, is_root, need_space, run, step

log = logging.getLogger("pytest_flake.vm")  # the vm package's one logger: its modules log through it

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
NETDEV_ID = "pfnet"
AGENT_PORT = "org.pytest-flake.agent.0"  # the guest agent's virtio-serial port (channel.py)

__all__ = ["AGENT_PORT", "GiB", "MiB", "NETDEV_ID", "QEMU_NS", "RECIPES", "hash_files", "is_root", "log",
           "need_space", "run", "step"]
