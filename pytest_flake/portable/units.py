"""systemd unit files and os-release files, parsed on this machine.

:func:`parse_unit` is a small parser of systemd unit files, for checking templated units
(``ExecStart`` points into the store path of the package); :func:`parse_environment` reads
``Environment=`` assignments (of a unit file, or as ``systemctl show`` prints them);
:func:`parse_os_release` reads an os-release file; :func:`matches_prefix` is portablectl's
rule for which units of an image it attaches.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

UNIT_DIRS = ("usr/lib/systemd/system", "etc/systemd/system", "lib/systemd/system")
UNIT_SUFFIXES = (".service", ".socket", ".target", ".timer", ".path")
OS_RELEASE = ("usr/lib/os-release", "etc/os-release")


def parse_environment(text: str) -> dict[str, str]:
    """``KEY=value`` assignments separated by blanks, quoted the shell's way (``Environment=`` syntax)."""
    env: dict[str, str] = {}
    for item in shlex.split(text):
        key, _, value = item.partition("=")
        env[key] = value
    return env


@dataclass
class UnitFile:
    """A parsed systemd unit file: ``sections[section][key]`` is the list of values."""

    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        """The last value of ``key`` in ``section`` (systemd's rule for single values)."""
        values = self.sections.get(section, {}).get(key)
        return values[-1] if values else default

    def getall(self, section: str, key: str) -> list[str]:
        """Every value of ``key`` in ``section``; an empty assignment resets the list."""
        return list(self.sections.get(section, {}).get(key, []))

    @property
    def exec_start(self) -> list[str]:
        """``ExecStart=`` of ``[Service]`` split into argv (prefixes like ``-``/``@`` removed)."""
        value = self.get("Service", "ExecStart")
        if not value:
            return []
        return shlex.split(value.lstrip("-@:+!"))

    @property
    def environment(self) -> dict[str, str]:
        """``Environment=`` assignments of ``[Service]``."""
        env: dict[str, str] = {}
        for value in self.getall("Service", "Environment"):
            env.update(parse_environment(value))
        return env


def parse_unit(text: str) -> UnitFile:
    """Parse a unit file (sections, ``key=value``, comments, ``\\`` continuations)."""
    unit = UnitFile()
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.sections.setdefault(line[1:-1], {})
            continue
        if section is None or "=" not in line:
            raise ValueError(f"not a unit file line: {raw!r}")
        key, _, value = line.partition("=")
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return unit


def parse_os_release(text: str) -> dict[str, str]:
    """``KEY=value`` lines of an os-release file, with quotes removed."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:
            parts = [value]
        values[key] = parts[0] if parts else ""
    return values


def matches_prefix(unit: str, prefix: str) -> bool:
    """portablectl's rule: the unit name is PREFIX followed by ``.``, ``-`` or ``@``."""
    return unit.startswith(prefix) and len(unit) > len(prefix) and unit[len(prefix)] in ".-@"

