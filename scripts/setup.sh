#!/usr/bin/env bash
# Sets up everything wl-webrtc needs on Debian 12 (or newer): Debian packages, Node.js 22, npm
# dependencies, and the build (TypeScript, the native addon, the web client).
#   scripts/setup.sh          packages to build and run the agent (and its headless desktop)
#   scripts/setup.sh --test   also the packages the tests and benches use (chromium, ffmpeg, ...)
# Idempotent: a second run only checks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
cd "$WL_ROOT"

want_test=0
for a in "$@"; do
  case "$a" in
    --test) want_test=1 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

# Build and run: the native addon's libraries, the headless desktop (sway, PipeWire, portal).
pkgs=(build-essential python3 pkg-config ca-certificates
      libpipewire-0.3-dev libspa-0.2-dev libavcodec-dev libavutil-dev libswscale-dev libx264-dev libva-dev
      libopenh264-dev libdrm-dev
      libwayland-dev wayland-protocols
      dbus dbus-daemon pipewire wireplumber sway xdg-desktop-portal xdg-desktop-portal-wlr
      fonts-dejavu-core)
# Tests and benches: a real browser, a terminal that animates the screen, input checkers, ffmpeg,
# network shaping between test hosts, a TURN server (coturn: the tests start their own `turnserver`),
# tcpdump (scripts/traffic-watch.sh: no test packet may leave for an address outside loopback and the test links).
test_pkgs=(chromium foot wev wtype ffmpeg nftables iproute2 procps openssl coturn tcpdump)
[ "$want_test" = 1 ] && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  # Packages with a daemon (coturn) must not start or enable it: the tests run their own turnserver
  # on their own ports. A policy-rc.d that answers 101 makes invoke-rc.d/deb-systemd-invoke skip the
  # start; an existing one (containers often have it) is left as it is.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if ! [ -e "$policy" ]; then
    printf '#!/bin/sh\n# wl-webrtc setup.sh: no service starts during this install\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || { [ "$own_policy" = 1 ] && $sudo rm -f "$policy"; exit 1; }
  [ "$own_policy" = 1 ] && $sudo rm -f "$policy"
  # Under systemd, also keep the packaged coturn service from starting at boot.
  if [ -d /run/systemd/system ] && dpkg-query -W -f='${Status}' coturn 2>/dev/null | grep -q 'install ok installed'; then
    $sudo systemctl disable --now coturn.service >/dev/null 2>&1 || true
  fi
fi

# Node.js 22 from the npm registry (this machine's own Node may be older).
if ! [ -x "$WL_NODE_HOME/bin/node" ]; then
  echo "setup: installing Node.js ($WL_NODE_PKG@$WL_NODE_RANGE) into .toolchain/"
  mkdir -p .toolchain
  [ -f .toolchain/package.json ] || echo '{"private":true}' > .toolchain/package.json
  npm install --prefix .toolchain --no-save --no-package-lock "$WL_NODE_PKG@$WL_NODE_RANGE" >/dev/null
fi
echo "setup: node $(node --version) at $(command -v node)"

# npm dependencies: only when package-lock.json changed since the last install.
stamp=node_modules/.wl-webrtc-lock
if ! [ -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund >/dev/null
  cp package-lock.json "$stamp"
fi

echo "setup: building (log: .build.log)"
if ! npm run --silent build > .build.log 2>&1; then
  tail -n 60 .build.log >&2
  echo "setup: the build failed; the whole log is in .build.log" >&2
  exit 1
fi
echo "setup: done"
