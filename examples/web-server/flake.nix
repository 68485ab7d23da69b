{
  description = "web-server: a Go service with a Docker image, a systemd unit and a portable service";

  # The real-world shape pytest-flake tests (needs nixpkgs, so it needs the network to
  # build the first time). The offline twin in ../offline has the same outputs.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      version = "1.0";

      web-server = pkgs.buildGoModule {
        pname = "web-server";
        inherit version;
        src = ./.;
        vendorHash = null; # no dependencies outside the standard library
        ldflags = [ "-X main.version=${version}" ];
        meta.mainProgram = "web-server";
      };

      # the templated unit: @webServer@ becomes the package's store path
      web-service = pkgs.substituteAll {
        name = "web-server.service";
        src = ./web-server.service;
        webServer = web-server;
      };
    in
    {
      packages.${system} = {
        default = web-server;
        inherit web-server web-service;

        docker = pkgs.dockerTools.buildLayeredImage {
          name = "web-server";
          tag = version;
          contents = [ web-server ];
          config = {
            Cmd = [ "${web-server}/bin/web-server" ];
            Env = [ "LISTEN=:3031" ];
            ExposedPorts."3031/tcp" = { };
          };
        };

        portable = pkgs.portableService {
          pname = "web-server";
          inherit version;
          description = "web-server as a systemd portable service";
          units = [ web-service ];
        };
      };
    };
}
