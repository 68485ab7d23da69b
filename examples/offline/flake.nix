{
  description = "web-server: the offline example for pytest-flake (no nixpkgs, no network)";

  # Every output is a plain `derivation` whose builder is the static busybox of the
  # build machine (Debian: busybox-static), so the flake builds with no nixpkgs and no
  # network. It needs `sandbox = false` (Debian's Nix default) and, for `portable`,
  # mksquashfs (squashfs-tools) on the build machine.
  # The four outputs have the shapes of the real-world flake in ../web-server:
  #   default      the web server (meta.mainProgram = "web-server")
  #   docker       a docker-archive (.tar.gz) with one layer per store path
  #   web-service  a templated systemd unit whose ExecStart points into `default`
  #   portable     a systemd portable service image, $out/web-server_1.0.raw (squashfs)
  # `*-next` are the same at version 1.1, to test upgrades (reattach, layer reuse).
  outputs = { self }:
    let
      system = "x86_64-linux";
      run = name: env: script: derivation ({
        inherit name system;
        builder = "/bin/busybox";
        args = [ "sh" "-euc" script ];
      } // env);

      busybox = run "busybox-static" { } ''
        mkdir -p $out/bin
        cp /bin/busybox $out/bin/busybox
      '';

      webServer = version: run "web-server-${version}" { inherit busybox version; } ''
        bb=$busybox/bin/busybox
        www=$out/share/web-server/www
        mkdir -p $out/bin $www/cgi-bin
        echo "web-server $version" > $www/index.html
        cat > $www/cgi-bin/info <<CGI
        #!$bb sh
        printf 'Content-Type: application/json\r\n\r\n'
        printf '{"name": "web-server", "version": "%s", "portable": "%s"}\n' "$version" "\''${PORTABLE:-}"
        CGI
        cat > $out/bin/web-server <<SCRIPT
        #!$bb sh
        # Serves $www; LISTEN is [ADDRESS:]PORT, PORT alone means every address.
        exec $bb httpd -f -vv -p "\''${LISTEN:-127.0.0.1:\''${PORT:-3031}}" -h $www
        SCRIPT
        chmod +x $out/bin/web-server $www/cgi-bin/info
      '' // { meta.mainProgram = "web-server"; };

      # One image layer a store path, as dockerTools.buildLayeredImage does. A layer is
      # a derivation of its own, so images that share a store path share the very same
      # layer (same digest), and loading a new version loads only what changed.
      layer = pkg: run "layer-${pkg.name}" { path = pkg; } ''
        root=$PWD/root; mkdir -p $root/nix/store
        cp -a $path $root/nix/store/
        touch -h -d @1 $root/nix $root/nix/store
        mkdir -p $out
        tar -C $root -cf $out/layer.tar nix
        sha256sum $out/layer.tar | cut -d' ' -f1 > $out/sha256
      '';

      # A docker-archive as `docker save` writes it, gzipped.
      dockerImage = server: run "docker-image-web-server.tar.gz" {
        inherit server;
        layers = map layer [ busybox server ];
      } ''
        tag=$(cut -d' ' -f2 $server/share/web-server/www/index.html)
        work=$PWD/image; mkdir -p $work
        names=""; diffids=""
        for l in $layers; do
          sum=$(cat $l/sha256)
          mkdir -p $work/$sum; cp $l/layer.tar $work/$sum/layer.tar
          names="$names''${names:+,}\"$sum/layer.tar\""
          diffids="$diffids''${diffids:+,}\"sha256:$sum\""
        done
        printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["%s/bin/web-server"],"Env":["LISTEN=3031"],"ExposedPorts":{"3031/tcp":{}},"Labels":{"org.opencontainers.image.title":"web-server"}},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
          "$server" "$diffids" > $work/config.json
        config=$(sha256sum $work/config.json | cut -d' ' -f1).json
        mv $work/config.json $work/$config
        printf '[{"Config":"%s","RepoTags":["web-server:%s"],"Layers":[%s]}]' "$config" "$tag" "$names" > $work/manifest.json
        cd $work && tar -cf - manifest.json $config */layer.tar | gzip -9n > $out
      '';

      webService = server: run "web-server.service" { inherit server; } ''
        cat > $out <<UNIT
        [Unit]
        Description=web-server, the pytest-flake example
        After=network.target

        [Service]
        Environment=LISTEN=3031
        ExecStart=$server/bin/web-server
        DynamicUser=yes

        [Install]
        WantedBy=multi-user.target
        UNIT
      '';

      # What nixpkgs' portableService makes: a squashfs with the closure, an
      # os-release and a unit named after the image's prefix.
      portable = server: run "web-server-portable" { inherit busybox server; } ''
        version=$(cut -d' ' -f2 $server/share/web-server/www/index.html)
        root=$PWD/root
        mkdir -p $root/nix/store $root/usr/lib/systemd/system $root/etc
        for d in proc sys dev run tmp var/tmp var/lib; do mkdir -p $root/$d; done
        cp -a $busybox $server $root/nix/store/
        printf 'ID=web-server\nNAME="web-server"\nVERSION_ID=%s\nPORTABLE_PREFIXES=web-server\n' "$version" > $root/usr/lib/os-release
        : > $root/etc/resolv.conf; : > $root/etc/machine-id
        cat > $root/usr/lib/systemd/system/web-server.service <<UNIT
        [Unit]
        Description=web-server $version (portable)

        [Service]
        Environment=LISTEN=3031
        ExecStart=$server/bin/web-server
        UNIT
        mkdir -p $out
        /usr/bin/mksquashfs $root $out/web-server_$version.raw -all-root -noappend -quiet -no-progress -comp gzip
      '';

      v1 = webServer "1.0";
      v2 = webServer "1.1";
    in
    {
      packages.${system} = {
        default = v1;
        web-server = v1;
        docker = dockerImage v1;
        web-service = webService v1;
        portable = portable v1;
        web-server-next = v2;
        docker-next = dockerImage v2;
        portable-next = portable v2;
      };
    };
}
