# ruff: noqa: E501  (recorded text is quoted as printed)
"""What real Nix binaries printed, recorded with ``scripts/nix-matrix`` (2.26: ``--in trixie``, 2.34: ``--in sid``;
2.8: this machine's Debian 12 ``nix-bin``), for the unit tests of :mod:`pytest_flake.nixerrors`.

Each text is the whole stderr of ``nix build --json --no-link -L path:DIR#packages.x86_64-linux.ATTR``
(``--show-trace`` or ``--option show-trace true`` where the name says so; ``build_failure_without_L``
without ``-L``) on the flake ``FLAKE`` below, or on ``SYNTAX_FLAKE`` for ``syntax_error``.
"""

from __future__ import annotations

FLAKE = '{\n  outputs = { self }: let\n    sys = "x86_64-linux";\n    mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n  in {\n    packages.${sys} = {\n      broken = mk "broken" "for i in 1 2 3 4 5; do echo log line $i; done; echo \'compile error: widget.c:3\' >&2; exit 3";\n      missing = mk "missing" ({ }).nothing;\n      thrown = mk "thrown" (throw "no widget configured");\n      typeerr = mk "typeerr" (1 + "a");\n      hello = mk "hello" "mkdir -p $out/bin; echo hi > $out/bin/hello";\n    };\n    apps.${sys}.hello = { type = "app"; program = "${self.packages.${sys}.hello}/bin/hello"; };\n  };\n}\n'
SYNTAX_FLAKE = '{\n  outputs = { self }: {\n    packages.x86_64-linux.default = derivation {\n      name = "x"; system = "x86_64-linux";\n      builder = "/bin/busybox" args = [ ];\n    };\n  };\n}\n'

# the store path of FLAKE's source, as the errors name it
SOURCE = "/nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source"
SYNTAX_SOURCE = "/nix/store/w1j3b51pwhx8hx90xv4z417wz71kh7kk-source"

RECORDED: dict[str, dict[str, str]] = {
    "2.8.0": {
        "build_failure": (
            "building '/nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv'...\n"
            'broken> log line 1\n'
            'broken> log line 2\n'
            'broken> log line 3\n'
            'broken> log line 4\n'
            'broken> log line 5\n'
            'broken> compile error: widget.c:3\n'
            "error: builder for '/nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv' failed with exit code 3\n"
        ),
        "build_failure_without_L": (
            "building '/nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv'...\n"
            "error: builder for '/nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv' failed with exit code 3;\n"
            '       last 6 log lines:\n'
            '       > log line 1\n'
            '       > log line 2\n'
            '       > log line 3\n'
            '       > log line 4\n'
            '       > log line 5\n'
            '       > compile error: widget.c:3\n'
            "       For full logs, run 'nix log /nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv'.\n"
        ),
        "missing_attribute": (
            "error: attribute 'nothing' missing\n"
            '\n'
            '       at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:8:30:\n'
            '\n'
            '            7|       broken = mk "broken" "for i in 1 2 3 4 5; do echo log line $i; done; echo \'compile error: widget.c:3\' >&2; exit 3";\n'
            '            8|       missing = mk "missing" ({ }).nothing;\n'
            '             |                              ^\n'
            '            9|       thrown = mk "thrown" (throw "no widget configured");\n'
            "(use '--show-trace' to show detailed location information)\n"
        ),
        "throw": (
            'error: no widget configured\n'
            "(use '--show-trace' to show detailed location information)\n"
        ),
        "type_error": (
            'error: cannot add a string to an integer\n'
            '\n'
            '       at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:10:35:\n'
            '\n'
            '            9|       thrown = mk "thrown" (throw "no widget configured");\n'
            '           10|       typeerr = mk "typeerr" (1 + "a");\n'
            '             |                                   ^\n'
            '           11|       hello = mk "hello" "mkdir -p $out/bin; echo hi > $out/bin/hello";\n'
            "(use '--show-trace' to show detailed location information)\n"
        ),
        "missing_attribute_show_trace": (
            "error: attribute 'nothing' missing\n"
            '\n'
            '       at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:8:30:\n'
            '\n'
            '            7|       broken = mk "broken" "for i in 1 2 3 4 5; do echo log line $i; done; echo \'compile error: widget.c:3\' >&2; exit 3";\n'
            '            8|       missing = mk "missing" ({ }).nothing;\n'
            '             |                              ^\n'
            '            9|       thrown = mk "thrown" (throw "no widget configured");\n'
            '\n'
            "       … while evaluating the attribute 'args' of the derivation 'missing'\n"
            '\n'
            '       at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:44:\n'
            '\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                            ^\n'
            '            5|   in {\n'
        ),
        "throw_show_trace": (
            'error: no widget configured\n'
            '\n'
            "       … while evaluating the attribute 'args' of the derivation 'thrown'\n"
            '\n'
            '       at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:44:\n'
            '\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                            ^\n'
            '            5|   in {\n'
        ),
        "throw_show_trace_option": (
            'error: no widget configured\n'
            '\n'
            "       … while evaluating the attribute 'args' of the derivation 'thrown'\n"
            '\n'
            '       at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:44:\n'
            '\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                            ^\n'
            '            5|   in {\n'
        ),
        "syntax_error": (
            "error: syntax error, unexpected '=', expecting ';'\n"
            '\n'
            '       at /nix/store/w1j3b51pwhx8hx90xv4z417wz71kh7kk-source/flake.nix:5:37:\n'
            '\n'
            '            4|       name = "x"; system = "x86_64-linux";\n'
            '            5|       builder = "/bin/busybox" args = [ ];\n'
            '             |                                     ^\n'
            '            6|     };\n'
        ),
    },
    "2.26.3": {
        "build_failure": (
            'this derivation will be built:\n'
            '  /nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv\n'
            "building '/nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv'...\n"
            'broken> log line 1\n'
            'broken> log line 2\n'
            'broken> log line 3\n'
            'broken> log line 4\n'
            'broken> log line 5\n'
            'broken> compile error: widget.c:3\n'
            "error: builder for '/nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv' failed with exit code 3\n"
        ),
        "build_failure_without_L": (
            'this derivation will be built:\n'
            '  /nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv\n'
            "building '/nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv'...\n"
            "error: builder for '/nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv' failed with exit code 3;\n"
            '       last 6 log lines:\n'
            '       > log line 1\n'
            '       > log line 2\n'
            '       > log line 3\n'
            '       > log line 4\n'
            '       > log line 5\n'
            '       > compile error: widget.c:3\n'
            '       For full logs, run:\n'
            '         nix log /nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv\n'
        ),
        "missing_attribute": (
            'error:\n'
            "       … while calling the 'derivationStrict' builtin\n"
            '         at <nix/derivation-internal.nix>:37:12:\n'
            '           36|\n'
            '           37|   strict = derivationStrict drvAttrs;\n'
            '             |            ^\n'
            '           38|\n'
            '\n'
            "       … while evaluating derivation 'missing'\n"
            '         whose name attribute is located at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:45\n'
            '\n'
            "       … while evaluating attribute 'args' of derivation 'missing'\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:91:\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                                                                           ^\n'
            '            5|   in {\n'
            '\n'
            "       error: attribute 'nothing' missing\n"
            '       at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:8:30:\n'
            '            7|       broken = mk "broken" "for i in 1 2 3 4 5; do echo log line $i; done; echo \'compile error: widget.c:3\' >&2; exit 3";\n'
            '            8|       missing = mk "missing" ({ }).nothing;\n'
            '             |                              ^\n'
            '            9|       thrown = mk "thrown" (throw "no widget configured");\n'
        ),
        "throw": (
            'error:\n'
            "       … while calling the 'derivationStrict' builtin\n"
            '         at <nix/derivation-internal.nix>:37:12:\n'
            '           36|\n'
            '           37|   strict = derivationStrict drvAttrs;\n'
            '             |            ^\n'
            '           38|\n'
            '\n'
            "       … while evaluating derivation 'thrown'\n"
            '         whose name attribute is located at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:45\n'
            '\n'
            "       … while evaluating attribute 'args' of derivation 'thrown'\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:91:\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                                                                           ^\n'
            '            5|   in {\n'
            '\n'
            "       (stack trace truncated; use '--show-trace' to show the full, detailed trace)\n"
            '\n'
            '       error: no widget configured\n'
        ),
        "type_error": (
            'error:\n'
            "       … while calling the 'derivationStrict' builtin\n"
            '         at <nix/derivation-internal.nix>:37:12:\n'
            '           36|\n'
            '           37|   strict = derivationStrict drvAttrs;\n'
            '             |            ^\n'
            '           38|\n'
            '\n'
            "       … while evaluating derivation 'typeerr'\n"
            '         whose name attribute is located at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:45\n'
            '\n'
            "       … while evaluating attribute 'args' of derivation 'typeerr'\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:91:\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                                                                           ^\n'
            '            5|   in {\n'
            '\n'
            '       error: cannot add a string to an integer\n'
            '       at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:10:35:\n'
            '            9|       thrown = mk "thrown" (throw "no widget configured");\n'
            '           10|       typeerr = mk "typeerr" (1 + "a");\n'
            '             |                                   ^\n'
            '           11|       hello = mk "hello" "mkdir -p $out/bin; echo hi > $out/bin/hello";\n'
        ),
        "missing_attribute_show_trace": (
            'error:\n'
            "       … while calling the 'derivationStrict' builtin\n"
            '         at <nix/derivation-internal.nix>:37:12:\n'
            '           36|\n'
            '           37|   strict = derivationStrict drvAttrs;\n'
            '             |            ^\n'
            '           38|\n'
            '\n'
            "       … while evaluating derivation 'missing'\n"
            '         whose name attribute is located at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:45\n'
            '\n'
            "       … while evaluating attribute 'args' of derivation 'missing'\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:91:\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                                                                           ^\n'
            '            5|   in {\n'
            '\n'
            "       error: attribute 'nothing' missing\n"
            '       at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:8:30:\n'
            '            7|       broken = mk "broken" "for i in 1 2 3 4 5; do echo log line $i; done; echo \'compile error: widget.c:3\' >&2; exit 3";\n'
            '            8|       missing = mk "missing" ({ }).nothing;\n'
            '             |                              ^\n'
            '            9|       thrown = mk "thrown" (throw "no widget configured");\n'
        ),
        "throw_show_trace": (
            'error:\n'
            "       … while calling the 'derivationStrict' builtin\n"
            '         at <nix/derivation-internal.nix>:37:12:\n'
            '           36|\n'
            '           37|   strict = derivationStrict drvAttrs;\n'
            '             |            ^\n'
            '           38|\n'
            '\n'
            "       … while evaluating derivation 'thrown'\n"
            '         whose name attribute is located at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:45\n'
            '\n'
            "       … while evaluating attribute 'args' of derivation 'thrown'\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:91:\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                                                                           ^\n'
            '            5|   in {\n'
            '\n'
            "       … while calling the 'throw' builtin\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:9:29:\n'
            '            8|       missing = mk "missing" ({ }).nothing;\n'
            '            9|       thrown = mk "thrown" (throw "no widget configured");\n'
            '             |                             ^\n'
            '           10|       typeerr = mk "typeerr" (1 + "a");\n'
            '\n'
            '       error: no widget configured\n'
        ),
        "throw_show_trace_option": (
            'error:\n'
            "       … while calling the 'derivationStrict' builtin\n"
            '         at <nix/derivation-internal.nix>:37:12:\n'
            '           36|\n'
            '           37|   strict = derivationStrict drvAttrs;\n'
            '             |            ^\n'
            '           38|\n'
            '\n'
            "       … while evaluating derivation 'thrown'\n"
            '         whose name attribute is located at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:45\n'
            '\n'
            "       … while evaluating attribute 'args' of derivation 'thrown'\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:91:\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                                                                           ^\n'
            '            5|   in {\n'
            '\n'
            "       … while calling the 'throw' builtin\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:9:29:\n'
            '            8|       missing = mk "missing" ({ }).nothing;\n'
            '            9|       thrown = mk "thrown" (throw "no widget configured");\n'
            '             |                             ^\n'
            '           10|       typeerr = mk "typeerr" (1 + "a");\n'
            '\n'
            '       error: no widget configured\n'
        ),
        "syntax_error": (
            "error: syntax error, unexpected '=', expecting ';'\n"
            '       at /nix/store/w1j3b51pwhx8hx90xv4z417wz71kh7kk-source/flake.nix:5:37:\n'
            '            4|       name = "x"; system = "x86_64-linux";\n'
            '            5|       builder = "/bin/busybox" args = [ ];\n'
            '             |                                     ^\n'
            '            6|     };\n'
        ),
    },
    "2.34.8": {
        "build_failure": (
            'this derivation will be built:\n'
            '  /nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv\n'
            "building '/nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv'...\n"
            'broken> log line 1\n'
            'broken> log line 2\n'
            'broken> log line 3\n'
            'broken> log line 4\n'
            'broken> log line 5\n'
            'broken> compile error: widget.c:3\n'
            "error: Cannot build '/nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv'.\n"
            '       Reason: builder failed with exit code 3.\n'
            '       Output paths:\n'
            '         /nix/store/cip5w2wr6gz5sbavbvqwdmmhnm26ry1a-broken\n'
        ),
        "build_failure_without_L": (
            'this derivation will be built:\n'
            '  /nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv\n'
            "building '/nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv'...\n"
            "error: Cannot build '/nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv'.\n"
            '       Reason: builder failed with exit code 3.\n'
            '       Output paths:\n'
            '         /nix/store/cip5w2wr6gz5sbavbvqwdmmhnm26ry1a-broken\n'
            '       Last 6 log lines:\n'
            '       > log line 1\n'
            '       > log line 2\n'
            '       > log line 3\n'
            '       > log line 4\n'
            '       > log line 5\n'
            '       > compile error: widget.c:3\n'
            '       For full logs, run:\n'
            '         nix log /nix/store/py5505bbizdwd7f2zv89v0hiagz10faj-broken.drv\n'
        ),
        "missing_attribute": (
            'error:\n'
            "       … while calling the 'derivationStrict' builtin\n"
            '         at «nix-internal»/derivation-internal.nix:37:12:\n'
            '           36|\n'
            '           37|   strict = derivationStrict drvAttrs;\n'
            '             |            ^\n'
            '           38|\n'
            '\n'
            "       … while evaluating derivation 'missing'\n"
            '         whose name attribute is located at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:45\n'
            '\n'
            "       … while evaluating attribute 'args' of derivation 'missing'\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:91:\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                                                                           ^\n'
            '            5|   in {\n'
            '\n'
            "       error: attribute 'nothing' missing\n"
            '       at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:8:30:\n'
            '            7|       broken = mk "broken" "for i in 1 2 3 4 5; do echo log line $i; done; echo \'compile error: widget.c:3\' >&2; exit 3";\n'
            '            8|       missing = mk "missing" ({ }).nothing;\n'
            '             |                              ^\n'
            '            9|       thrown = mk "thrown" (throw "no widget configured");\n'
        ),
        "throw": (
            'error:\n'
            "       … while calling the 'derivationStrict' builtin\n"
            '         at «nix-internal»/derivation-internal.nix:37:12:\n'
            '           36|\n'
            '           37|   strict = derivationStrict drvAttrs;\n'
            '             |            ^\n'
            '           38|\n'
            '\n'
            "       … while evaluating derivation 'thrown'\n"
            '         whose name attribute is located at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:45\n'
            '\n'
            "       … while evaluating attribute 'args' of derivation 'thrown'\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:91:\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                                                                           ^\n'
            '            5|   in {\n'
            '\n'
            "       (stack trace truncated; use '--show-trace' to show the full, detailed trace)\n"
            '\n'
            '       error: no widget configured\n'
        ),
        "type_error": (
            'error:\n'
            "       … while calling the 'derivationStrict' builtin\n"
            '         at «nix-internal»/derivation-internal.nix:37:12:\n'
            '           36|\n'
            '           37|   strict = derivationStrict drvAttrs;\n'
            '             |            ^\n'
            '           38|\n'
            '\n'
            "       … while evaluating derivation 'typeerr'\n"
            '         whose name attribute is located at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:45\n'
            '\n'
            "       … while evaluating attribute 'args' of derivation 'typeerr'\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:91:\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                                                                           ^\n'
            '            5|   in {\n'
            '\n'
            '       error: cannot add a string to an integer\n'
            '       at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:10:35:\n'
            '            9|       thrown = mk "thrown" (throw "no widget configured");\n'
            '           10|       typeerr = mk "typeerr" (1 + "a");\n'
            '             |                                   ^\n'
            '           11|       hello = mk "hello" "mkdir -p $out/bin; echo hi > $out/bin/hello";\n'
        ),
        "missing_attribute_show_trace": (
            'error:\n'
            "       … while calling the 'derivationStrict' builtin\n"
            '         at «nix-internal»/derivation-internal.nix:37:12:\n'
            '           36|\n'
            '           37|   strict = derivationStrict drvAttrs;\n'
            '             |            ^\n'
            '           38|\n'
            '\n'
            "       … while evaluating derivation 'missing'\n"
            '         whose name attribute is located at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:45\n'
            '\n'
            "       … while evaluating attribute 'args' of derivation 'missing'\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:91:\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                                                                           ^\n'
            '            5|   in {\n'
            '\n'
            "       error: attribute 'nothing' missing\n"
            '       at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:8:30:\n'
            '            7|       broken = mk "broken" "for i in 1 2 3 4 5; do echo log line $i; done; echo \'compile error: widget.c:3\' >&2; exit 3";\n'
            '            8|       missing = mk "missing" ({ }).nothing;\n'
            '             |                              ^\n'
            '            9|       thrown = mk "thrown" (throw "no widget configured");\n'
        ),
        "throw_show_trace": (
            'error:\n'
            "       … while calling the 'derivationStrict' builtin\n"
            '         at «nix-internal»/derivation-internal.nix:37:12:\n'
            '           36|\n'
            '           37|   strict = derivationStrict drvAttrs;\n'
            '             |            ^\n'
            '           38|\n'
            '\n'
            "       … while evaluating derivation 'thrown'\n"
            '         whose name attribute is located at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:45\n'
            '\n'
            "       … while evaluating attribute 'args' of derivation 'thrown'\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:91:\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                                                                           ^\n'
            '            5|   in {\n'
            '\n'
            "       … while calling the 'throw' builtin\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:9:29:\n'
            '            8|       missing = mk "missing" ({ }).nothing;\n'
            '            9|       thrown = mk "thrown" (throw "no widget configured");\n'
            '             |                             ^\n'
            '           10|       typeerr = mk "typeerr" (1 + "a");\n'
            '\n'
            '       error: no widget configured\n'
        ),
        "throw_show_trace_option": (
            'error:\n'
            "       … while calling the 'derivationStrict' builtin\n"
            '         at «nix-internal»/derivation-internal.nix:37:12:\n'
            '           36|\n'
            '           37|   strict = derivationStrict drvAttrs;\n'
            '             |            ^\n'
            '           38|\n'
            '\n'
            "       … while evaluating derivation 'thrown'\n"
            '         whose name attribute is located at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:45\n'
            '\n'
            "       … while evaluating attribute 'args' of derivation 'thrown'\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:4:91:\n'
            '            3|     sys = "x86_64-linux";\n'
            '            4|     mk = name: script: derivation { inherit name; system = sys; builder = "/bin/busybox"; args = [ "sh" "-c" script ]; };\n'
            '             |                                                                                           ^\n'
            '            5|   in {\n'
            '\n'
            "       … while calling the 'throw' builtin\n"
            '         at /nix/store/g8yl16ny5kncv2ky8mvz4v5vg3p9s4z6-source/flake.nix:9:29:\n'
            '            8|       missing = mk "missing" ({ }).nothing;\n'
            '            9|       thrown = mk "thrown" (throw "no widget configured");\n'
            '             |                             ^\n'
            '           10|       typeerr = mk "typeerr" (1 + "a");\n'
            '\n'
            '       error: no widget configured\n'
        ),
        "syntax_error": (
            "error: syntax error, unexpected '=', expecting ';'\n"
            '       at /nix/store/w1j3b51pwhx8hx90xv4z417wz71kh7kk-source/flake.nix:5:37:\n'
            '            4|       name = "x"; system = "x86_64-linux";\n'
            '            5|       builder = "/bin/busybox" args = [ ];\n'
            '             |                                     ^\n'
            '            6|     };\n'
        ),
    },
}

# stderr of `nix path-info /nix/store/000...-pytest-flake-probe.drv^out` (nixcmd._knows_caret)
PROBE: dict[str, str] = {
    "2.8.0": "error: '/nix/store/00000000000000000000000000000000-pytest-flake-probe.drv^out' is not a valid URL\n",
    "2.26.3": "don't know how to build these paths:\n  /nix/store/00000000000000000000000000000000-pytest-flake-probe.drv\nerror: path '/nix/store/00000000000000000000000000000000-pytest-flake-probe.drv' is not valid\n",
    "2.34.8": "don't know how to build these paths:\n  /nix/store/00000000000000000000000000000000-pytest-flake-probe.drv\nerror: path '/nix/store/00000000000000000000000000000000-pytest-flake-probe.drv' is not valid\n",
}

# `nix --version` of each, and of Lix and Determinate Nix (as their release notes show)
VERSIONS = {"2.8.0": "nix (Nix) 2.8.0\n", "2.26.3": "nix (Nix) 2.26.3\n", "2.34.8": "nix (Nix) 2.34.8\n"}
