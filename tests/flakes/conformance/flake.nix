{
  description = "pytest-flake conformance flake: one output per shape that real Nix builders make";

  # Built without nixpkgs (no network here), but each output is laid out exactly as the
  # nixpkgs builder it mirrors lays it out; a comment on each output names that builder.
  # programs.nix: packages and apps for `nix run`'s rules (flake.run).
  # images.nix: every portable-service and docker image shape.
  outputs = { self }:
    let
      system = "x86_64-linux";
      lib = import ./lib.nix { inherit system; };
      programs = import ./programs.nix lib;
      images = import ./images.nix lib;
    in
    {
      packages.${system} = (programs.packages or { }) // (images.packages or { });
      apps.${system} = (programs.apps or { }) // (images.apps or { });
    };
}
