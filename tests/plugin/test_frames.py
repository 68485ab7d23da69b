"""The frames a user sees when pytest-flake fails inside a library it calls (tenacity, paramiko...).

Real runs: the Docker endpoint is an ssh:// host whose name does not resolve, so the real ssh
fails inside the plugin's retry wrapper (tenacity, which re-raises through concurrent.futures).
The ssh client comes with the set-up (scripts/setup.d/35-otherhost.sh).
"""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "offline"


def test_a_failure_inside_a_retry_shows_only_the_users_frame(pytester: pytest.Pytester,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "ssh://no-such-host.invalid")
    pytester.makepyfile(test_image="""
        def helper(docker_container):
            return docker_container("docker", ports=[3031])

        def test_image(docker_container):
            helper(docker_container)
    """)
    result = pytester.runpytest(f"--flake=path:{EXAMPLE}", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "test_image.py:5: in test_image",
        "    helper(docker_container)",
        "test_image.py:2: in helper",
        "    return docker_container(\"docker\", ports=[3031])",
        "SSHError: ssh to no-such-host.invalid: no such host name*",
    ])
    text = result.stdout.str()
    for frame in ("tenacity", "concurrent", "futures", "pytest_flake/", "paramiko", "Traceback"):
        assert frame not in text, frame
