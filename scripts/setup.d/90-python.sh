# The plugin itself, editable from this checkout, with everything its test suite imports.
# Reinstalled when another checkout's copy is the one installed.
installed=$(cd / && python3 -c 'import pytest_flake, testinfra, tenacity, requests, pytest_timeout, xdist, docker, libvirt, paramiko, pycdlib, mypy, vermin, ruff
import importlib.metadata as m, os
m.entry_points(group="pytest11")["flake"]
print(os.path.dirname(os.path.dirname(os.path.realpath(pytest_flake.__file__))))' 2>/dev/null || true)
if [ "$installed" != "$(realpath "$PROJECT_DIR")" ]; then
  say "installing pytest-flake (editable, from $PROJECT_DIR) with its test dependencies"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e "$PROJECT_DIR[test,docker,vm]" >/dev/null
fi
