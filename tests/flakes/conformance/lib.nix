# What every output of the conformance flake is made with: plain derivations whose
# builder is the build machine's static busybox (no nixpkgs, no network).
{ system }:
rec {
  inherit system;

  # run NAME ATTRS SCRIPT: a derivation that runs SCRIPT with busybox sh.
  run = name: env: script: derivation ({
    inherit name system;
    builder = "/bin/busybox";
    args = [ "sh" "-euc" script ];
  } // env);

  busybox = run "busybox-static" { } ''
    mkdir -p $out/bin
    cp /bin/busybox $out/bin/busybox
  '';
}
