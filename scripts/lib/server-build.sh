# Builds a pinned server release from its upstream source tarball and caches the binaries.
# Sourced by scripts/redis8 and scripts/valkey9, which set the pins and call `server_build`.
#
# The tarball is Debian's copy of the upstream release ("orig" tarball) on the Debian mirror this
# machine's apt already uses: fetched by path, checked against a pinned SHA-256, and never looked up in
# a package index, so a new Debian revision cannot break it. Binaries land in
# $REDIS_WRITEBEHIND_CACHE (default ~/.cache/redis-writebehind)/<name>-<version>/bin.
# DEBIAN_MIRROR=<url> names the mirror to fetch from instead of the one in the apt sources.

log() { echo "$SERVER_NAME: $*" >&2; }

# Prints the first plain Debian mirror URI of this machine's apt sources (deb822 or one-line form).
debian_mirror() {
  local f u=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    u=$(awk '/^URIs:/ {for (i=2;i<=NF;i++) print $i}' "$f" | grep -v -- '-security' | grep -E '/debian/?$' | head -n1 || true)
    [ -n "$u" ] && break
  done
  if [ -z "$u" ]; then
    u=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$1=="deb" || $1=="deb-src" {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' \
      | grep -v -- '-security' | grep -E '/debian/?$' | head -n1 || true)
  fi
  echo "${u%/}"
}

# Installs what the build needs when it is missing (make, gcc, curl or wget, ca-certificates).
build_tools() {
  local sudo="" pkgs=()
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  command -v make >/dev/null 2>&1 || pkgs+=(make)
  command -v gcc >/dev/null 2>&1 || pkgs+=(gcc)
  command -v curl >/dev/null 2>&1 || command -v wget >/dev/null 2>&1 || pkgs+=(curl ca-certificates)
  command -v sha256sum >/dev/null 2>&1 || pkgs+=(coreutils)
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing build tools: ${pkgs[*]}"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
  fi
}

download() { # url dest
  if command -v curl >/dev/null 2>&1; then curl -fsSL --retry 3 -o "$2" "$1"; else wget -q -O "$2" "$1"; fi
}

# server_build: needs SERVER_NAME (redis|valkey), SERVER_VERSION, SERVER_POOL_PATH, SERVER_SHA256,
# SERVER_BINARIES (server first), SERVER_OVERRIDE_VAR (name of the env var holding a bin dir) and
# SERVER_VERSION_RE (a grep -E pattern the server's --version must match). Prints the server's path.
server_build() {
  local cache="${REDIS_WRITEBEHIND_CACHE:-$HOME/.cache/redis-writebehind}"
  local prefix="$cache/$SERVER_NAME-$SERVER_VERSION" server="${SERVER_BINARIES%% *}"
  local override="${!SERVER_OVERRIDE_VAR:-}" b

  is_wanted() { [ -x "$1/$server" ] && "$1/$server" --version 2>/dev/null | grep -Eq "$SERVER_VERSION_RE"; }

  if [ -n "$override" ]; then
    is_wanted "$override" || { log "$SERVER_OVERRIDE_VAR=$override holds no $server matching $SERVER_VERSION_RE"; return 1; }
    echo "$override/$server"; return 0
  fi
  local complete=1
  for b in $SERVER_BINARIES; do [ -x "$prefix/bin/$b" ] || complete=0; done
  if [ "$complete" = 1 ] && is_wanted "$prefix/bin"; then echo "$prefix/bin/$server"; return 0; fi

  build_tools
  local mirror="${DEBIAN_MIRROR:-}"
  [ -n "$mirror" ] || mirror=$(debian_mirror)
  mirror="${mirror%/}"
  if [ -z "$mirror" ]; then
    log "no Debian mirror found in /etc/apt/sources*; set $SERVER_OVERRIDE_VAR to a directory holding $server $SERVER_VERSION"
    return 1
  fi
  local url="$mirror/$SERVER_POOL_PATH" work="$cache/src-$SERVER_NAME-$SERVER_VERSION"
  local tarball="$cache/$(basename "$SERVER_POOL_PATH")"
  mkdir -p "$cache"
  if [ ! -f "$tarball" ] || ! echo "$SERVER_SHA256  $tarball" | sha256sum -c --status; then
    log "fetching $url"
    if ! download "$url" "$tarball.part"; then
      rm -f "$tarball.part"
      log "download failed: $url"
      log "check that the mirror serves $SERVER_POOL_PATH, or set $SERVER_OVERRIDE_VAR to a directory holding $server $SERVER_VERSION"
      return 1
    fi
    local got; got=$(sha256sum "$tarball.part" | awk '{print $1}')
    if [ "$got" != "$SERVER_SHA256" ]; then
      rm -f "$tarball.part"
      log "checksum mismatch for $url: got sha256 $got, expected $SERVER_SHA256"
      log "the file on the mirror is not the pinned $SERVER_NAME $SERVER_VERSION release; nothing was built."
      log "fetch the release from another mirror into $tarball, or set $SERVER_OVERRIDE_VAR"
      return 1
    fi
    mv "$tarball.part" "$tarball"
  fi

  rm -rf "$work"; mkdir -p "$work"
  tar -xzf "$tarball" -C "$work"
  local tree; tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n1)
  [ -n "$tree" ] || { log "$tarball unpacked to nothing"; return 1; }
  log "building $SERVER_NAME $SERVER_VERSION (a few minutes, once)"
  # The bundled jemalloc, lua and hiredis are used, as in the official images.
  make -C "$tree" -j"$(nproc 2>/dev/null || echo 2)" BUILD_TLS=no USE_SYSTEMD=no >&2
  mkdir -p "$prefix/bin"
  for b in $SERVER_BINARIES; do install -m 0755 "$tree/src/$b" "$prefix/bin/$b"; done
  is_wanted "$prefix/bin" || { log "the built $server does not report $SERVER_VERSION"; return 1; }
  rm -rf "$work"
  echo "$prefix/bin/$server"
}
