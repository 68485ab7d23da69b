{
  description = "pytest-flake --flake-check: one broken output of each kind, beside good ones";

  # Self-contained like the other test flakes: plain derivations built by the build
  # machine's static busybox (no nixpkgs, no network; mksquashfs for the portable image).
  # `pytest --flake-check` on it must fail exactly the four broken outputs, each with its
  # evidence: checks.failing (its build log), packages.docker-exits (the container's logs),
  # packages.missing-exec (the missing ExecStart), packages.portable-fails (the unit's journal).
  # packages.portable-oneshot is a oneshot unit that exits 0: done, not down, so it passes.
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

      # A program nix run runs (pname), and the unit that starts it.
      hello = run "hello-1.0" { inherit busybox; pname = "hello"; } ''
        mkdir -p $out/bin
        printf '#!%s sh\necho hello\n' $busybox/bin/busybox > $out/bin/hello
        chmod +x $out/bin/hello
      '';
      unit = name: exec: run name { inherit exec; } ''
        printf '[Unit]\nDescription=%s\n\n[Service]\nExecStart=%s\n\n[Install]\nWantedBy=multi-user.target\n' \
          "$name" "$exec" > $out
      '';

      # A docker-archive as `docker save` writes it (one layer a store path); its Cmd is CMD.
      layer = pkg: run "layer-${pkg.name}" { path = pkg; } ''
        root=$PWD/root; mkdir -p $root/nix/store
        cp -a $path $root/nix/store/
        mkdir -p $out
        tar -C $root -cf $out/layer.tar nix
        sha256sum $out/layer.tar | cut -d' ' -f1 > $out/sha256
      '';
      dockerImage = name: cmd: run "docker-image-${name}.tar.gz" { layers = [ (layer busybox) ]; inherit cmd; } ''
        work=$PWD/image; mkdir -p $work
        l=$layers; sum=$(cat $l/sha256)
        mkdir -p $work/$sum; cp $l/layer.tar $work/$sum/layer.tar
        printf '{"architecture":"amd64","os":"linux","config":{"Cmd":%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
          "$cmd" "$sum" > $work/config.json
        config=$(sha256sum $work/config.json | cut -d' ' -f1).json
        mv $work/config.json $work/$config
        printf '[{"Config":"%s","RepoTags":["${name}:1.0"],"Layers":["%s/layer.tar"]}]' "$config" "$sum" > $work/manifest.json
        cd $work && tar -cf - manifest.json $config */layer.tar | gzip -9n > $out
      '';

      # A portable image (nixpkgs' portableService layout) whose one unit runs SCRIPT (TYPE: simple, oneshot).
      portable = pname: type: script: run "${pname}-portable" { inherit busybox pname script type; } ''
        root=$PWD/root
        mkdir -p $root/nix/store $root/etc/systemd/system
        for d in proc sys dev run tmp var/tmp var/lib; do mkdir -p $root/$d; done
        cp -a $busybox $root/nix/store/
        printf 'ID=nixos\nPORTABLE_ID=%s\n' "$pname" > $root/etc/os-release
        : > $root/etc/resolv.conf; : > $root/etc/machine-id
        printf '[Unit]\nDescription=%s\n\n[Service]\nType=%s\nExecStart=%s/bin/busybox sh -c %s\n' \
          "$pname" "$type" "$busybox" "'$script'" > $root/etc/systemd/system/$pname.service
        mkdir -p $out
        /usr/bin/mksquashfs $root $out/''${pname}_1.0.raw -all-root -noappend -quiet -no-progress -comp gzip
      '';
    in
    {
      checks.${system} = {
        passing = run "passing-check" { } "echo all good; touch $out";
        failing = run "failing-check" { } ''
          echo "the failing check says: 2 + 2 is not 5" >&2
          exit 3
        '';
      };
      packages.${system} = {
        default = hello;
        good-service = unit "good.service" "${hello}/bin/hello";
        missing-exec = unit "missing-exec.service" "${hello}/bin/no-such-program";
        docker-exits = dockerImage "exits" ''["${busybox}/bin/busybox","sh","-c","echo the container says goodbye; exit 7"]'';
        docker-runs = dockerImage "runs" ''["${busybox}/bin/busybox","sleep","3600"]'';
        portable-fails = portable "fails" "simple" "echo the unit gives up; exit 5";
        portable-runs = portable "runs" "simple" "exec sleep 3600";
        # a oneshot that ran and exited 0 is done, not down
        portable-oneshot = portable "once" "oneshot" "echo set up once";
      };
      lib.answer = 42;
    };
}
