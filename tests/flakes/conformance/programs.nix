# Packages and apps that exercise `nix run`'s choice of program (owned by the flake.run work).
lib: {
  packages = { };
  apps = { };
}
