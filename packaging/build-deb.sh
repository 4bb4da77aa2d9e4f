#!/usr/bin/env bash
# Builds a Debian package of wl-webrtc from a built tree (run scripts/setup.sh first):
#   packaging/build-deb.sh [OUTDIR]        -> OUTDIR/wl-webrtc_<version>_<arch>.deb (default: dist/)
# The package is self-contained under /usr/lib/wl-webrtc, including its own Node.js 22 (Debian 12 ships
# Node 18), production npm modules, the native addon and the preload helpers; /usr/bin/wl-webrtc runs it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../scripts/env.sh"
cd "$WL_ROOT"
out="$(realpath -m "${1:-dist}")"
version="$(node -p 'require("./package.json").version')"
arch="$(dpkg --print-architecture)"
for f in dist/agent/cli/main.js native/build/Release/wl_webrtc.node web-client/dist/index.html "$WL_NODE_HOME/bin/node"; do
  [ -e "$f" ] || { echo "build-deb: $f is missing: run scripts/setup.sh first" >&2; exit 1; }
done

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
lib="$stage/usr/lib/wl-webrtc"
mkdir -p "$lib/native/build/Release" "$lib/native/preload" "$lib/web-client" "$lib/node/bin" "$stage/usr/bin" \
  "$stage/usr/lib/systemd/user" "$stage/usr/share/doc/wl-webrtc" "$stage/DEBIAN"

cp package.json package-lock.json "$lib/"
cp -r dist/agent "$lib/dist-agent.tmp" && mkdir -p "$lib/dist" && mv "$lib/dist-agent.tmp" "$lib/dist/agent"
find "$lib/dist" -name '*.map' -delete
cp native/build/Release/wl_webrtc.node "$lib/native/build/Release/"
[ -d native/preload/build ] && cp -r native/preload/build "$lib/native/preload/"
cp -r web-client/dist "$lib/web-client/"
cp -r config "$lib/"
cp "$WL_NODE_HOME/bin/node" "$lib/node/bin/node"
# Production modules only, built (usocket) against the bundled Node.
(cd "$lib" && npm ci --omit=dev --prefer-offline --ignore-scripts=false --no-audit --no-fund >/dev/null)
rm -f "$lib/package-lock.json"

cat > "$stage/usr/bin/wl-webrtc" <<'WRAP'
#!/bin/sh
# wl-webrtc, with the Node.js it was built for.
lib="$(dirname "$(readlink -f "$0")")/../lib/wl-webrtc"
exec "$lib/node/bin/node" "$lib/dist/agent/cli/main.js" "$@"
WRAP
chmod 755 "$stage/usr/bin/wl-webrtc"
sed 's|^ExecStart=.*|ExecStart=/usr/bin/wl-webrtc serve|' systemd/wl-webrtc.service > "$stage/usr/lib/systemd/user/wl-webrtc.service"
cp README.md "$stage/usr/share/doc/wl-webrtc/"
cp -r docs "$stage/usr/share/doc/wl-webrtc/"
cp config/wl-webrtc.toml "$stage/usr/share/doc/wl-webrtc/config.example.toml"

size_kb="$(du -sk "$stage/usr" | cut -f1)"
# Library packages: whatever the addon really links, looked up with dpkg (as dpkg-shlibdeps would).
addon=native/build/Release/wl_webrtc.node
libdeps="$(objdump -p "$addon" | awk '/NEEDED/{print $2}' | while read -r name; do
  so="$(ldd "$addon" | awk -v n="$name" '$1 == n {print $3}')"
  if [ -n "$so" ]; then dpkg -S "$(readlink -f "$so")" 2>/dev/null || dpkg -S "$so" 2>/dev/null || true; fi
done | cut -d: -f1 | sort -u | paste -sd, | sed 's/,/, /g')"
cat > "$stage/DEBIAN/control" <<CTRL
Package: wl-webrtc
Version: $version
Architecture: $arch
Maintainer: wl-webrtc developers <dev@wl-webrtc.invalid>
Installed-Size: $size_kb
Section: net
Priority: optional
Depends: ${libdeps}, dbus, pipewire, xdg-desktop-portal
Recommends: wireplumber, xdg-desktop-portal-wlr | xdg-desktop-portal-gnome | xdg-desktop-portal-kde
Suggests: sway
Homepage: https://example.invalid/wl-webrtc
Description: Wayland desktop in a web browser over WebRTC
 A per-user agent (systemd user service) that shares the Wayland desktop through
 xdg-desktop-portal and PipeWire, encodes it to H.264 and streams it to web
 browsers over WebRTC, with token-protected signaling. It can also run its own
 headless desktop.
CTRL

mkdir -p "$out"
deb="$out/wl-webrtc_${version}_${arch}.deb"
# gzip: xz takes minutes on the bundled Node.js for a few MB less.
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
