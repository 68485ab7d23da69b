# Nix (Debian's nix-bin) and what the offline example flake builds with.
apt_install nix-bin busybox-static squashfs-tools git ca-certificates curl

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
# Nix builds as the nixbld users when the group exists; make sure it has members.
if getent group nixbld >/dev/null && [ -z "$(getent group nixbld | cut -d: -f4)" ]; then
  for i in 1 2 3 4; do
    id "nixbld$i" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin \
      --gid nixbld --groups nixbld "nixbld$i"
  done
fi
