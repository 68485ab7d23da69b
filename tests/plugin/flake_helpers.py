"""Helpers of the pytester tests: a tiny offline flake and the nix requirement."""

from __future__ import annotations

import textwrap
from pathlib import Path

# A tiny flake that builds offline: each package is a `derivation` with busybox as builder.
TINY_FLAKE = r'''
{
  outputs = { self }:
    let
      system = "x86_64-linux";
      run = name: script: derivation {
        inherit name system;
        builder = "/bin/busybox";
        args = [ "sh" "-euc" script ];
      };
      program = name: body: run name ''
        mkdir -p $out/bin
        cat > $out/bin/${name} <<'EOF'
        #!/bin/busybox sh
        ${body}
        EOF
        chmod +x $out/bin/${name}
      '';
    in {
      packages.${system} = {
        default = run "message" "echo @MESSAGE@ > $out";
        # prints, but never opens a port
        silent = program "silent" "echo \"starting on port $PORT\"; exec /bin/busybox sleep 60";
        # exits at once with an error
        crash = program "crash" "echo 'error: missing config file' >&2; exit 2";
        # a web server honouring PORT
        web = run "web" ''
          mkdir -p $out/bin $out/www
          echo "tiny web" > $out/www/index.html
          printf '#!/bin/busybox sh\nexec /bin/busybox httpd -f -vv -p "127.0.0.1:$PORT" -h %s/www\n' $out \
            > $out/bin/web
          chmod +x $out/bin/web
        '';
        broken = run "broken" ''
          for i in $(/bin/busybox seq 1 35); do echo "log line $i"; done
          echo "compile error: widget.c:3" >&2
          exit 3
        '';
      };
    };
}
'''


def write_flake(directory: Path, message: str = "hello") -> Path:
    """Write the tiny flake into ``directory``; ``default`` is a file holding ``message``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "flake.nix").write_text(textwrap.dedent(TINY_FLAKE).replace("@MESSAGE@", message))
    return directory
