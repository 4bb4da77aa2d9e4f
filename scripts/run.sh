#!/usr/bin/env bash
# One command to set up and run the agent. With no Wayland session around (a server, CI, a container)
# the agent brings up its own headless desktop. Extra arguments go to `wl-webrtc serve`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/setup.sh"
source "$here/env.sh"
exec node "$WL_ROOT/dist/agent/cli/main.js" serve --print-url "$@"
