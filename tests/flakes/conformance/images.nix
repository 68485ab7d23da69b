# Every portable-service and docker image shape (owned by the image-shape work).
#
# Each output is laid out as the nixpkgs builder named in its comment lays its output out
# (nixpkgs' pkgs/build-support/portable-service/default.nix and
# pkgs/build-support/docker/default.nix + stream_layered_image.py), built here with busybox
# instead of nixpkgs. Needs on the build machine: mksquashfs (squashfs-tools) for the
# portable images and zstd for docker-zstd.
#
# Every image serves HTTP with busybox httpd: `/` says "NAME VERSION", `/cgi-bin/info`
# answers {"name", "version", "portable"} where portable is the unit's $PORTABLE.
# Portable images listen on the port in their unit (8081...8084), docker images on 8080.
lib:
let
  inherit (lib) run busybox;

  # The served program: bin/NAME runs busybox httpd on $LISTEN ([ADDRESS:]PORT).
  server = name: version: run "${name}-${version}" { inherit busybox version; pname = name; } ''
    bb=$busybox/bin/busybox
    www=$out/share/$pname/www
    mkdir -p $out/bin $www/cgi-bin
    echo "$pname $version" > $www/index.html
    cat > $www/cgi-bin/info <<CGI
    #!$bb sh
    printf 'Content-Type: application/json\r\n\r\n'
    printf '{"name": "%s", "version": "%s", "portable": "%s"}\n' "$pname" "$version" "\''${PORTABLE:-}"
    CGI
    cat > $out/bin/$pname <<SCRIPT
    #!$bb sh
    exec $bb httpd -f -vv -p "\''${LISTEN:-127.0.0.1:8080}" -h $www
    SCRIPT
    chmod +x $out/bin/$pname $www/cgi-bin/info
  '' // { meta.mainProgram = name; };

  # ---- portable services ----------------------------------------------------------------

  # A unit named after the image's prefix, as portableService's `units` must be.
  unit = pname: version: port: srv: run "${pname}.service" { inherit srv pname version port; } ''
    cat > $out <<UNIT
    [Unit]
    Description=$pname $version (portable)

    [Service]
    Environment=LISTEN=$port
    ExecStart=$srv/bin/$pname
    UNIT
  '';

  # portableService's rootFsScaffold: the units in etc/systemd/system, etc/os-release
  # (PORTABLE_ID=pname, ID=nixos), empty resolv.conf and machine-id to mount over, the
  # mount points. `usrlib` puts os-release and units under usr/lib instead, the way a
  # distribution tree (mkosi) lays them out.
  scaffold = { pname, version, port, usrlib ? false }:
    let srv = server pname version; u = unit pname version port srv; in
    run "root-fs-scaffold-${version}" { inherit pname version srv; unit = u; usrlib = if usrlib then "1" else ""; } ''
      if [ -n "$usrlib" ]; then release=$out/usr/lib/os-release; units=$out/usr/lib/systemd/system
      else release=$out/etc/os-release; units=$out/etc/systemd/system; fi
      mkdir -p $out/etc $units $(dirname $release) $out/proc $out/sys $out/dev $out/run \
               $out/tmp $out/var/tmp $out/var/lib $out/var/cache $out/var/log
      touch $out/etc/resolv.conf $out/etc/machine-id
      printf 'BUILD_ID=rolling\nID=nixos\nPORTABLE_ID=%s\nPORTABLE_PRETTY_NAME="%s %s"\nPRETTY_NAME=NixOS\n' \
        "$pname" "$pname" "$version" > $release
      cp $unit $units/$pname.service
    '' // { inherit srv; };

  # The image's root: the closure (scaffold, program, busybox) under nix/store, then the scaffold.
  squash = sc: dest: ''
    root=$PWD/root; mkdir -p $root/nix/store
    cp -a ${busybox} ${sc.srv} ${sc} $root/nix/store/
    cp -a ${sc}/. $root/
    /usr/bin/mksquashfs $root ${dest} -quiet -no-progress -noappend -all-root -root-mode 755 -b 1M -comp xz
  '';

  # portableService as nixpkgs has it today: $out/${pname}_${version}.raw (a directory).
  portableService = { pname, version, port, usrlib ? false }:
    let sc = scaffold { inherit pname version port usrlib; }; in
    run "${pname}-img-${version}" { } ''
      mkdir -p $out
      ${squash sc "$out/${pname}_${version}.raw"}
    '';

  # ---- docker ---------------------------------------------------------------------------

  # One layer a store path, as stream_layered_image.py's add_layer_dir makes it: a tar with
  # nix, nix/store and the path; named by the sha256 of the tar (its diff id).
  storeLayer = path: run "layer-${path.name}" { inherit path; } ''
    root=$PWD/root; mkdir -p $root/nix/store
    cp -a $path $root/nix/store/
    touch -h -d @1 $root/nix $root/nix/store
    mkdir -p $out
    tar -C $root -cf $out/layer.tar nix
    sha256sum $out/layer.tar | cut -d' ' -f1 > $out/checksum
  '';

  # streamLayeredImage's customisation layer: the contents linked at the root (bin).
  customisationLayer = srv: run "customisation-layer" { inherit srv; } ''
    mkdir -p layer $out
    ln -s $srv/bin layer/bin
    mkdir -p layer/tmp
    tar -C layer -cf $out/layer.tar bin tmp
    sha256sum $out/layer.tar | cut -d' ' -f1 > $out/checksum
  '';

  imageConfig = srv: name: ''{"Cmd":["${srv}/bin/${name}"],"Env":["LISTEN=8080"],"ExposedPorts":{"8080/tcp":{}},"Labels":{"org.opencontainers.image.title":"${name}"}}'';

  # streamLayeredImage: $out is a script (stream-NAME) that writes an uncompressed
  # docker-archive to stdout: CHECKSUM/layer.tar per layer, then CONFIGSHA.json, then
  # manifest.json last. Here the archive's members are prepared at build time.
  streamLayeredImage = { name, tag }:
    let
      srv = server name tag;
      layers = map storeLayer [ busybox srv ] ++ [ (customisationLayer srv) ];
      parts = run "${name}-parts" { inherit layers tag; imageName = name; config = imageConfig srv name; } ''
        mkdir -p $out; members=""; paths=""; diffids=""
        for l in $layers; do
          sum=$(cat $l/checksum)
          mkdir -p $out/$sum; cp $l/layer.tar $out/$sum/layer.tar
          members="$members $sum/layer.tar"
          paths="$paths''${paths:+,}\"$sum/layer.tar\""
          diffids="$diffids''${diffids:+,}\"sha256:$sum\""
        done
        printf '{"created":"1970-01-01T00:00:01+00:00","architecture":"amd64","os":"linux","config":%s,"rootfs":{"diff_ids":[%s],"type":"layers"},"history":[]}' \
          "$config" "$diffids" > $out/config.json
        sum=$(sha256sum $out/config.json | cut -d' ' -f1)
        mv $out/config.json $out/$sum.json
        printf '[{"Config":"%s","RepoTags":["%s:%s"],"Layers":[%s]}]' "$sum.json" "$imageName" "$tag" "$paths" > $out/manifest.json
        echo "$members $sum.json manifest.json" > $out/members
      '';
    in
    run "stream-${name}" { inherit busybox parts; } ''
      cat > $out <<SCRIPT
      #!$busybox/bin/busybox sh
      echo "Creating layers of ${name}:${tag}..." >&2
      cd $parts
      exec $busybox/bin/busybox tar -cf - $(cat $parts/members)
      SCRIPT
      chmod +x $out
    '';

  # buildLayeredImage: "${stream} | ${compress.compress} > $out", named NAME.tar${ext}.
  buildLayeredImage = { name, tag, compressor ? "gz" }:
    let
      stream = streamLayeredImage { inherit name tag; };
      compress = {
        gz = { ext = ".gz"; cmd = "gzip -c"; };
        zstd = { ext = ".zst"; cmd = "/usr/bin/zstd -T1 -q -c"; };
      }.${compressor};
    in
    run "${name}.tar${compress.ext}" { inherit stream; } "$stream | ${compress.cmd} > $out";

  # buildImage (the legacy layout): docker-image-NAME.tar.gz holding one directory a layer
  # (LAYERID/VERSION "1.0", LAYERID/json with id, checksum and Size, LAYERID/layer.tar),
  # the config CONFIGSHA.json, manifest.json, and repositories {"NAME":{"TAG":"LAYERID"}};
  # members sorted by name, so the layers come before manifest.json.
  buildImage = { name, tag }:
    let srv = server name tag; in
    run "docker-image-${name}.tar.gz" { inherit busybox srv tag; imageName = name; config = imageConfig srv name; } ''
      root=$PWD/layer; mkdir -p $root/nix/store
      cp -a $busybox $srv $root/nix/store/
      ln -s $srv/bin $root/bin
      image=$PWD/image; temp=$PWD/temp; mkdir -p $image $temp
      tar -C $root -cf $temp/layer.tar bin nix
      sum=$(sha256sum $temp/layer.tar | cut -d' ' -f1)
      printf '{"created":"1970-01-01T00:00:01Z","architecture":"amd64","os":"linux","config":%s,"checksum":"tarsum.v1+sha256:%s"}' \
        "$config" "$sum" > $temp/json
      printf '1.0' > $temp/VERSION
      layerID=$(sha256sum $temp/json | cut -d' ' -f1)
      size=$(stat -c %s $temp/layer.tar)
      printf '{"created":"1970-01-01T00:00:01Z","architecture":"amd64","os":"linux","config":%s,"checksum":"tarsum.v1+sha256:%s","id":"%s","Size":%s}' \
        "$config" "$sum" "$layerID" "$size" > $temp/json
      mv $temp $image/$layerID
      printf '{"created":"1970-01-01T00:00:01Z","architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:01Z"}]}\n' \
        "$config" "$sum" > $image/config.json
      configsum=$(sha256sum $image/config.json | cut -d' ' -f1)
      mv $image/config.json $image/$configsum.json
      printf '[\n  {\n    "RepoTags": [\n      "%s:%s"\n    ],\n    "Layers": [\n      "%s/layer.tar"\n    ],\n    "Config": "%s.json"\n  }\n]\n' \
        "$imageName" "$tag" "$layerID" "$configsum" > $image/manifest.json
      printf '{"%s":{"%s":"%s"}}\n' "$imageName" "$tag" "$layerID" > $image/repositories
      cd $image && tar -cf - $(ls | sort) | gzip -c > $out
    '';
in
{
  packages = {
    # portableService of 2022 (the seed's): $out is the .raw file itself, so its store
    # name is <hash>-raw-server_20220227.raw; os-release in etc/.
    portable-raw =
      let sc = scaffold { pname = "raw-server"; version = "20220227"; port = 8081; }; in
      run "raw-server_20220227.raw" { } (squash sc "$out");

    # portableService today: $out/dir-server_1.0.raw, os-release in etc/.
    portable-dir = portableService { pname = "dir-server"; version = "1.0"; port = 8082; };

    # The same with os-release and units under usr/lib (a distribution-built tree).
    portable-usrlib = portableService { pname = "usrlib-server"; version = "1.0"; port = 8083; usrlib = true; };

    # A directory image: the image's root as $out (<hash>-tree-server_1.0), no squashfs.
    portable-tree =
      let sc = scaffold { pname = "tree-server"; version = "1.0"; port = 8084; }; in
      run "tree-server_1.0" { } ''
        mkdir -p $out/nix/store
        cp -a ${busybox} ${sc.srv} ${sc} $out/nix/store/
        cp -a ${sc}/. $out/
      '';

    # dockerTools.buildLayeredImage (compressor = "gz", the default): gzip-server.tar.gz
    docker-gzip = buildLayeredImage { name = "gzip-server"; tag = "1.0"; };

    # dockerTools.buildLayeredImage with compressor = "zstd": zstd-server.tar.zst
    docker-zstd = buildLayeredImage { name = "zstd-server"; tag = "1.0"; compressor = "zstd"; };

    # dockerTools.streamLayeredImage: the script stream-stream-server
    docker-stream = streamLayeredImage { name = "stream-server"; tag = "1.0"; };

    # dockerTools.buildImage (legacy layout): docker-image-legacy-server.tar.gz
    docker-legacy = buildImage { name = "legacy-server"; tag = "1.0"; };

    # Not images, for the error messages: a program (bin/, share/), a systemd unit file,
    # and a directory holding two .raw images.
    not-image-program = server "plain-server" "1.0";
    not-image-unit = unit "plain-server" "1.0" 8085 (server "plain-server" "1.0");
    not-image-two-raws = run "two-raws" { a = portableService { pname = "dir-server"; version = "1.0"; port = 8082; }; } ''
      mkdir -p $out
      cp $a/dir-server_1.0.raw $out/dir-server_1.0.raw
      cp $a/dir-server_1.0.raw $out/dir-server_1.1.raw
    '';
  };
}
