"""An image a Docker daemon holds (:class:`Image`), and what Docker needs of the build it came from.

Docker knows a flake's build only through :class:`Built` (a :class:`pytest_flake.nix.Build` is
one): the Nix side and the Docker side are sibling components and do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .archive import Archive


class Built(Protocol):
    """A built flake output, as Docker reads it: the ``Build`` of ``flake.build()``."""

    @property
    def attr(self) -> str: ...

    @property
    def out(self) -> Path: ...

    @property
    def outputs(self) -> dict[str, Path]: ...

    @property
    def drv(self) -> Path: ...


@dataclass(frozen=True)
class Image:
    """An image the daemon holds: ``.tag`` (``web-server:1.0``), ``.id`` (``sha256:...``), ``.build``.

    ``loaded`` says whether this call loaded it (False: the daemon already had it);
    ``new_layers`` how many of its ``layers`` the daemon did not have before.
    """

    tag: str
    id: str
    build: Built | None
    archive: Archive | None = field(default=None, compare=False)
    loaded: bool = False
    layers: int = 0
    new_layers: int = 0
    seconds: float = 0.0

    @property
    def ref(self) -> str:
        """What to run: the tag, else the id."""
        return self.tag or self.id

    def __str__(self) -> str:
        return self.ref


__all__ = ["Built", "Image"]
