# The plugin itself, editable, with everything its test suite imports.
if ! python3 -c 'import pytest_flake, testinfra, tenacity, requests, pytest_timeout, docker, libvirt, paramiko' 2>/dev/null \
   || ! python3 -c 'import importlib.metadata as m; m.entry_points(group="pytest11")["flake"]' 2>/dev/null; then
  say "installing pytest-flake (editable) with its test dependencies"
  python3 -m pip install -q --disable-pip-version-check -e "$PROJECT_DIR[test,docker,vm]" >/dev/null
fi
