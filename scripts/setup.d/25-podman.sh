# shellcheck shell=bash
# Podman, which many Nix users run instead of Docker: the suite also runs the Docker
# fixtures against its Docker-compatible socket (tests/integration/test_podman.py starts a
# private `podman system service` of its own). catatonit is the init Podman's containers get.
apt_install podman catatonit
