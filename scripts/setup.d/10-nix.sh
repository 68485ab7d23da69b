# Nix (Debian's nix-bin) and what the offline example flake builds with.
apt_install nix-bin busybox-static squashfs-tools zstd git ca-certificates curl

# Builds here are offline: no binary cache to ask, flakes on. Only added when the
# machine's nix.conf does not say otherwise (a user's own settings are kept).
NIX_CONF=/etc/nix/nix.conf
mkdir -p /etc/nix
touch "$NIX_CONF"
if ! grep -q '^substituters' "$NIX_CONF"; then
  say "nix: no binary cache (offline builds) in $NIX_CONF"
  printf '\n# pytest-flake: builds are offline\nsubstituters =\n' >> "$NIX_CONF"
fi
if ! grep -q '^experimental-features' "$NIX_CONF"; then
  printf 'experimental-features = nix-command flakes\n' >> "$NIX_CONF"
fi
if ! grep -q '^sandbox' "$NIX_CONF"; then
  # the offline example's builder is the machine's static busybox
  printf 'sandbox = false\n' >> "$NIX_CONF"
fi
# Nix running as root builds as the users of `build-users-group` (nixbld by default), so
# that a builder cannot touch root's files: that is what Nix's own multi-user installer sets
# up (a nixbld group, nixbld1..32), and what a Nix user expects. Debian's nix-bin makes no
# such group, and then every build fails with "the group 'nixbld' specified in
# 'build-users-group' does not exist". Emptying build-users-group instead would make builds
# run as root; the group is kept. A nix.conf that names another group is the user's choice.
group=nixbld
if grep -q '^[[:space:]]*build-users-group' "$NIX_CONF"; then  # may be set empty on purpose
  group=$(sed -n 's/^[[:space:]]*build-users-group[[:space:]]*=[[:space:]]*//p' "$NIX_CONF" | tail -n 1)
fi
if [ -n "$group" ] && ! getent group "$group" >/dev/null; then
  say "nix: creating the build users group $group"
  groupadd --system "$group"
fi
if [ -n "$group" ] && [ -z "$(getent group "$group" | cut -d: -f4)" ]; then
  say "nix: adding build users ${group}1..8 to $group"
  for i in 1 2 3 4 5 6 7 8; do
    id "$group$i" >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/empty \
      --shell /usr/sbin/nologin --gid "$group" --groups "$group" --comment "Nix build user $i" "$group$i"
    id -nG "$group$i" | tr ' ' '\n' | grep -qx "$group" || usermod -a -G "$group" "$group$i"
  done
fi
