# Packages and apps that exercise `nix run`'s choice of program (owned by the flake.run work).
#
# nix run picks `apps.<system>.<attr>` first (its `program`, built from the string's
# context), else the package's `bin/` + `meta.mainProgram`, else `pname`, else the name
# without its version as `builtins.parseDrvName` splits it (what `lib.getExe` does).
# pytest-flake also runs a lone file in `bin/` when none of those names exists.
#
# Every program prints "<id> <its arguments>" and exits; with $PORT set it then serves
# "<id>" over HTTP on 127.0.0.1:$PORT (busybox httpd), so a test can tell them apart
# both ways.
lib:
let
  inherit (lib) run busybox;

  # Shell lines that install program FILE into DIR/bin, saying ID.
  program = dir: file: id: ''
    mkdir -p ${dir}/bin ${dir}/share/www/${file}
    echo "${id}" > ${dir}/share/www/${file}/index.html
    cat > ${dir}/bin/${file} <<SCRIPT
    #!${busybox}/bin/busybox sh
    echo "${id} \$*"
    if [ -n "\''${PORT:-}" ]; then
      exec ${busybox}/bin/busybox httpd -f -vv -p "127.0.0.1:\$PORT" -h ${dir}/share/www/${file}
    fi
    SCRIPT
    chmod +x ${dir}/bin/${file}
  '';

  # A package NAME whose bin/ holds FILES (each says "<file> from <name>").
  package = name: env: files:
    run name env (builtins.concatStringsSep "\n"
      (map (file: program "$out" file "${file} from ${name}") files));

  # name "greeter-2", no pname, no mainProgram: parseDrvName gives "greeter", so nix run
  # runs bin/greeter, not the other file (and not the first one in sort order).
  greeter = run "greeter-2" { } ''
    mkdir -p $out/bin
    cp ${busybox}/bin/busybox $out/bin/busybox
    ${program "$out" "greeter" "greeter from greeter-2"}
  '';

  # pname wins over the parsed name, and both files exist.
  pnameDiffers = package "pname-demo-3.1" { pname = "hello-pname"; version = "3.1"; }
    [ "hello-pname" "pname-demo" ];

  # meta.mainProgram wins over pname and the parsed name, all three files exist.
  mainProgram = package "mp-tool-1.0" { pname = "mp-tool"; } [ "mp-main" "mp-tool" ]
    // { meta.mainProgram = "mp-main"; };

  # mainProgram names a file that is not there: an error, no fallback to bin/missing-main.
  missingMain = package "missing-main-1.0" { } [ "missing-main" ]
    // { meta.mainProgram = "ghost"; };

  # None of the names exists; the only file is run (nix run itself fails here).
  lone = package "lone-1.0" { } [ "solo" ];

  # None of the names exists and there are two files: an error that lists bin/.
  ambiguous = package "ambiguous-1.0" { } [ "alpha" "beta" ];

  # Programs that apps point at.
  toolbox = package "toolbox-1.0" { } [ "hi" "bye" ];

  # Two outputs: an app's program in the second one (string context names output "tools").
  split = run "split-1.0" { outputs = [ "out" "tools" ]; } ''
    mkdir -p $out
    echo "the out output of split" > $out/README
    ${program "$tools" "split-tool" "split-tool from split-1.0 (tools output)"}
  '';

  # Says who it is, then sleeps and never opens $PORT: flake.run(port=...) gives up after
  # --flake-timeout.
  sleeper = run "sleeper-1.0" { } ''
    mkdir -p $out/bin
    cat > $out/bin/sleeper <<SCRIPT
    #!${busybox}/bin/busybox sh
    echo "sleeper from sleeper-1.0 \$*"
    exec ${busybox}/bin/busybox sleep 600
    SCRIPT
    chmod +x $out/bin/sleeper
  '';

  app = program: { type = "app"; inherit program; };
in
{
  packages = {
    default = greeter;
    greeter-2 = greeter;
    pname-differs = pnameDiffers;
    main-program = mainProgram;
    missing-main = missingMain;
    inherit lone ambiguous toolbox split sleeper;
  };
  apps = {
    # `nix run .#` runs this, not packages.default.
    default = app "${toolbox}/bin/hi";
    bye = app "${toolbox}/bin/bye";
    split-tool = app "${split.tools}/bin/split-tool";
    # Broken apps: a clear error each.
    wrong-type = { type = "derivation"; program = "${toolbox}/bin/hi"; };
    no-such-program = app "${toolbox}/bin/nope";
  };
}
