"""Options, ini twins and env vars, the report header, markers and the doctor, through pytester."""

from __future__ import annotations

import pytest

from tests.plugin.flake_helpers import write_flake

PASSING = "def test_ok():\n    pass\n"
USES = "def test_uses(flake_settings):\n    pass\n"


def header_line(result: pytest.RunResult, start: str) -> str:
    lines = [line for line in result.outlines if line.startswith(start)]
    assert lines, f"no {start!r} line in:\n" + "\n".join(result.outlines)
    return lines[0]


def test_option_beats_env_beats_ini_in_header(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(PASSING)
    pytester.makeini("[pytest]\nflake = path:./from-ini\n")
    monkeypatch.setenv("PYTEST_FLAKE", "path:./from-env")

    result = pytester.runpytest("--flake", "path:./from-option")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["pytest-flake: flake: path:./from-option (from --flake)"])

    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["pytest-flake: flake: path:./from-env (from $PYTEST_FLAKE)"])

    monkeypatch.delenv("PYTEST_FLAKE")
    result = pytester.runpytest()
    # a relative path in the ini file is relative to the ini file's directory
    result.stdout.fnmatch_lines([f"pytest-flake: flake: path:{pytester.path}/from-ini (from ini flake)"])


def test_default_flake_is_the_invocation_directory(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PASSING)
    result = pytester.runpytest()
    result.stdout.no_fnmatch_line("pytest-flake*")  # nothing asked for pytest-flake: it stays silent
    result = pytester.runpytest("--vm-memory=512")
    result.stdout.fnmatch_lines(["pytest-flake: flake: none (pass --flake DIR)"])
    (pytester.path / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines([f"pytest-flake: flake: {pytester.path} (from flake.nix in the invocation directory)"])


@pytest.mark.usefixtures("nix")
def test_header_names_system_nix_docker_and_vm_settings(pytester: pytest.Pytester,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile("def test_uses(flake):\n    pass\n")  # a test that uses nix: the header runs it
    pytester.makeini("[pytest]\nvm_accel = tcg\n")
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/test-docker.sock")
    result = pytester.runpytest("--vm-image", "debian", "--flake-system", "aarch64-linux")
    result.stdout.fnmatch_lines([
        "pytest-flake: docker: unix:///tmp/test-docker.sock (from $DOCKER_HOST)",
        "pytest-flake: libvirt: *; vm image: debian (Debian 12, systemd 252; from --vm-image); "
        "accel: tcg (from ini vm_accel)",
        "collected 1 item",
        "pytest-flake: system: aarch64-linux, nix 2.*",
    ])
    result = pytester.runpytest()
    assert header_line(result, "pytest-flake: system: ").startswith("pytest-flake: system: x86_64-linux, nix 2.")


def test_settings_fixture_sees_resolved_values(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile("""
        def test_settings(flake_settings, flake_session):
            assert flake_settings.vm_memory == 2048
            assert flake_settings.source("vm_memory") == "--vm-memory"
            assert flake_settings.vm_cpus == 3
            assert flake_settings.source("vm_cpus") == "$PYTEST_FLAKE_VM_CPUS"
            assert flake_settings.flake_keep is True
            assert flake_settings.source("flake_keep") == "ini flake_keep"
            assert flake_session.id.startswith("pf-")
            assert flake_session.dir.is_dir()
    """)
    pytester.makeini("[pytest]\nflake_keep = true\n")
    monkeypatch.setenv("PYTEST_FLAKE_VM_CPUS", "3")
    pytester.runpytest("--vm-memory=2048").assert_outcomes(passed=1)


def test_bad_number_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PASSING)
    result = pytester.runpytest("--vm-memory=lots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest-flake: --vm-memory='lots' is not a number (memory of each VM in MiB)"])
    result.stdout.no_fnmatch_line("*passed*")
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_bad_choice_is_a_usage_error_listing_choices(pytester: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(USES)
    result = pytester.runpytest("--vm-accel=xen")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--vm-accel: invalid choice: 'xen' (choose from 'auto', 'kvm', 'tcg')"])

    pytester.makeini("[pytest]\nvm_accel = xen\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "ERROR: pytest-flake: ini 'vm_accel'='xen' is not valid (valid values: auto, kvm, tcg)",
    ])

    pytester.makeini("[pytest]\n")
    monkeypatch.setenv("PYTEST_FLAKE_KEEP", "sometimes")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest-flake: $PYTEST_FLAKE_KEEP='sometimes' is not a boolean*"])


def test_options_are_documented_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    out = result.stdout.str()
    assert "pytest-flake: integration tests of Nix flakes" in out
    for flag in ("--flake=REF", "--flake-system", "--vm-image", "--libvirt-uri", "--vm-accel", "--vm-memory",
                 "--vm-cpus", "--docker-host", "--flake-keep", "--flake-timeout", "--flake-doctor"):
        assert flag in out, flag
    for ini in ("flake ", "vm_accel", "vm_memory", "flake_keep", "flake_timeout", "docker_host"):
        assert f"  {ini}" in out, ini


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines([
        "@pytest.mark.nix: uses Nix to build flake outputs*",
        "@pytest.mark.docker: needs a Docker daemon*",
        "@pytest.mark.vm: boots virtual machines*",
        "@pytest.mark.portable: attaches systemd portable services*",
        "@pytest.mark.flake(ref): test this flake reference instead of --flake*",
    ])


MARKED = """
    import pytest

    @pytest.fixture
    def built(flake):
        return flake

    def test_uses_flake(flake):
        pass

    def test_indirect(built):
        pass

    def test_http_only(http):
        pass

    def test_plain():
        pass

    def test_vm(vm):
        pass

    def test_container(docker_container):
        pass

    def test_portable(vm, portable_service):
        pass

    def test_portable_in_container(systemd_container, portable_service):
        pass
"""


SHOW_MARKS = """
    import pytest

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(items):
        for item in items:
            print("MARKS", item.name, ",".join(sorted({m.name for m in item.iter_markers()})))
"""


def test_markers_are_added_by_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(MARKED)
    pytester.makeconftest(SHOW_MARKS)
    result = pytester.runpytest("--collect-only", "-q", "-s")
    marks = {parts[1]: set(parts[2].split(",")) - {""}
             for parts in (line.split(" ") for line in result.outlines if line.startswith("MARKS "))}
    assert marks["test_uses_flake"] >= {"nix"}
    assert marks["test_indirect"] >= {"nix"}  # through a fixture that uses flake
    assert marks["test_http_only"] == set()
    assert marks["test_plain"] == set()
    assert "vm" in marks["test_vm"] and "nix" not in marks["test_vm"]
    assert "docker" in marks["test_container"]
    assert {"portable", "vm"} <= marks["test_portable"]  # the VM's fixture marks it: -m "not vm" skips it
    assert {"portable", "nspawn"} <= marks["test_portable_in_container"]
    assert "vm" not in marks["test_portable_in_container"]  # a container guest runs under -m "not vm"
    nix = {name for name, m in marks.items() if "nix" in m}

    result = pytester.runpytest("--collect-only", "-q", "-m", "not vm")
    kept = {line.split("::", 1)[1] for line in result.outlines if "::" in line}
    assert kept == set(marks) - {"test_vm", "test_portable"}

    result = pytester.runpytest("--collect-only", "-q", "-m", "not nix")
    result.stdout.fnmatch_lines([f"*{8 - len(nix)}/8 tests collected ({len(nix)} deselected)*"])
    kept = {line.split("::", 1)[1] for line in result.outlines if "::" in line}
    assert kept == set(marks) - nix


def test_not_nix_deselects_without_building(pytester: pytest.Pytester, no_nix_path: object) -> None:
    pytester.makepyfile("""
        def test_builds(flake):
            flake.build()

        def test_plain():
            pass
    """)
    result = pytester.runpytest("-m", "not nix", "--flake", "path:./nowhere")
    result.assert_outcomes(passed=1, deselected=1)


def test_strict_markers_with_our_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        pytestmark = pytest.mark.flake("path:./elsewhere")

        @pytest.mark.nix
        def test_nix():
            pass

        @pytest.mark.vm
        @pytest.mark.docker
        @pytest.mark.portable
        def test_infra():
            pass

        @pytest.mark.flake("path:.")
        def test_flake():
            pass
    """)
    pytester.runpytest("--strict-markers").assert_outcomes(passed=3)
    pytester.makepyfile(test_bogus="""
        import pytest

        @pytest.mark.bogus
        def test_x():
            pass
    """)
    result = pytester.runpytest("--strict-markers", "test_bogus.py")
    result.stdout.fnmatch_lines(["*'bogus' not found in `markers` configuration option*"])


@pytest.mark.usefixtures("nix")
def test_doctor_ok(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_flake import doctor

    monkeypatch.setattr(doctor, "COMPONENTS", ())  # only the Nix checks: docker and vm have their own tests
    pytester.makepyfile("def test_never_runs():\n    raise AssertionError\n")
    result = pytester.runpytest("--flake-doctor")
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "pytest-flake doctor",
        "  ok    nix: nix (Nix) 2.*",
        "  ok    nix system: x86_64-linux",
        "all checks passed",
    ])
    result.stdout.no_fnmatch_line("*FAIL*")
    result.stdout.no_fnmatch_line("*test_never_runs*")


def test_doctor_fails_without_nix(pytester: pytest.Pytester, no_nix_path: object) -> None:
    result = pytester.runpytest("--flake-doctor")
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "pytest-flake doctor",
        "  FAIL  nix: not found on PATH; install Nix: 'apt-get install nix-bin' on Debian/Ubuntu*",
        "some checks failed: see the FAIL lines above",
    ])


@pytest.mark.usefixtures("nix")
def test_flake_marker_overrides_flake_for_one_test(pytester: pytest.Pytester) -> None:
    main = write_flake(pytester.path / "main", message="from-main").resolve()
    other = write_flake(pytester.path / "other", message="from-other").resolve()
    pytester.makepyfile(f"""
        import pytest

        def test_default(flake):
            assert flake.ref == "path:{main}"
            assert flake.build().out.read_text() == "from-main\\n"

        @pytest.mark.flake("path:./other")
        def test_marked(flake):
            assert flake.ref == "path:{other}"
            assert flake.build().out.read_text() == "from-other\\n"

        def test_default_again(flake):
            assert flake.ref == "path:{main}"
            assert flake.build().out.read_text() == "from-main\\n"
    """)
    pytester.makepyfile(test_module_marker=f"""
        import pytest

        pytestmark = pytest.mark.flake("path:{other}")

        def test_module(flake):
            assert flake.ref == "path:{other}"
    """)
    pytester.runpytest("--flake", "path:./main").assert_outcomes(passed=4)


@pytest.mark.usefixtures("nix")
def test_flake_marker_without_ref_is_an_error(pytester: pytest.Pytester) -> None:
    write_flake(pytester.path / "main")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.flake
        def test_marked(flake):
            flake.ref
    """)
    result = pytester.runpytest("--flake", "path:./main")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*UsageError: *test_marked: the flake marker takes a flake reference*"])


def test_no_form_wins_over_env_and_ini(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile("""
        def test_keep(flake_settings):
            print("KEEP", flake_settings.flake_keep, flake_settings.source("flake_keep"))
    """)
    pytester.makeini("[pytest]\nflake_keep = true\n")
    monkeypatch.setenv("PYTEST_FLAKE_KEEP", "1")
    result = pytester.runpytest("-s")
    result.stdout.fnmatch_lines(["*KEEP True $PYTEST_FLAKE_KEEP*"])
    result = pytester.runpytest("-s", "--no-flake-keep")
    result.stdout.fnmatch_lines(["*KEEP False --no-flake-keep*"])
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--no-flake-keep*"])


def test_relative_vm_image_in_ini_is_relative_to_the_ini_file(pytester: pytest.Pytester,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (pytester.path / "images").mkdir()
    (pytester.path / "images" / "mine.qcow2").touch()
    (pytester.path / "sub").mkdir()
    pytester.makeini("[pytest]\nvm_image = images/mine.qcow2\n")
    (pytester.path / "sub" / "test_uses.py").write_text(USES)
    monkeypatch.chdir(pytester.path / "sub")  # pytest runs from another directory than the ini file's
    result = pytester.runpytest("-c", "../tox.ini", "--rootdir", str(pytester.path), "test_uses.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*vm image: {pytester.path}/images/mine.qcow2 (from ini vm_image)*"])
