#!/usr/bin/env bash
# One command to set up and run the whole test suite (unit and integration, on a real headless desktop).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/setup.sh" --test
source "$here/env.sh"
cd "$WL_ROOT"
npm run --silent lint
# Every packet the suite sends must stay on loopback or on the test links it makes (README, "Traffic").
exec scripts/traffic-watch.sh --strict -- npm test
