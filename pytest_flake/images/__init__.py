"""The one image store: the disks VMs boot and the OS trees containers boot, built or fetched once and cached.

Everything lives in ``<state>/images`` (:func:`image_cache`), shared by every session (a build
or a download happens once, under a lock). ``vm/`` and ``nspawn/`` both take their images here
and never import each other. Nothing here imports pytest or starts a guest; nothing writes to
the terminal (a download's progress goes to the callback the caller passes, else to the log).

The modules (imports only go down this list):

==============  ====================================================================================
``cache``       the cache's place, the :class:`Image` record, where the recipes (``vms/``) are, shared steps
``disks``       ``qemu-img info`` (the one place it runs), :func:`check_disk_image`, overlays
``download``    atomic, checksummed downloads; :class:`Progress` handed to a callback
``arch``        the Arch cloud image: recipe, checksum file, download, cache
``debian``      the Debian images of every release and variant (one recipe, built with debootstrap)
``trees``       OS trees for containers: the Debian images' roots, unpacked tarballs
``resolve``     ``--vm-image`` as an :class:`Image`
==============  ====================================================================================
"""

from __future__ import annotations

from .arch import ArchRecipe, fetch_arch, parse_sha256_file
from .cache import RECIPES, STALE_IMAGE_SECONDS, GiB, Image, MiB, image_cache
from .debian import (
    DEBIAN_RELEASES,
    DEBIAN_VARIANTS,
    DebianName,
    build_debian,
    debian_image_dir,
    debian_names,
    debian_recipe_hash,
    parse_debian_name,
)
from .disks import HINT, check_disk_image, create_overlay, disk_format_of, disk_info, overlay_on
from .download import Progress, ProgressCallback, download
from .resolve import resolve_image
from .trees import (
    MARKER,
    TARBALL_SUFFIXES,
    LoopGuard,
    Tree,
    check_os_tree,
    debian_tree,
    debian_tree_dir,
    tarball_tree,
)

__all__ = [
    "ArchRecipe", "DEBIAN_RELEASES", "DEBIAN_VARIANTS", "DebianName", "GiB", "HINT", "Image", "LoopGuard", "MARKER",
    "MiB", "Progress", "ProgressCallback", "RECIPES", "STALE_IMAGE_SECONDS", "TARBALL_SUFFIXES", "Tree",
    "build_debian", "check_disk_image", "check_os_tree", "create_overlay", "debian_image_dir", "debian_names",
    "debian_recipe_hash", "debian_tree", "debian_tree_dir", "disk_format_of", "disk_info", "download", "fetch_arch",
    "image_cache", "overlay_on", "parse_debian_name", "parse_sha256_file", "resolve_image", "tarball_tree",
]
