import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

import type { WlWebrtcAddon } from "../../native/index.js";
import { UnsupportedError, errorMessage } from "../util/errors.js";

export type * from "../../native/index.js";

/** Where `node-gyp rebuild --directory native` puts the addon, relative to this file (source or dist/). */
function candidatePaths(): string[] {
  const fromEnv = process.env.WL_WEBRTC_ADDON;
  const paths = fromEnv ? [fromEnv] : [];
  // agent/native/addon.ts -> ../../native; dist/agent/native/addon.js -> ../../../native
  for (const rel of ["../../native/build/Release/wl_webrtc.node", "../../../native/build/Release/wl_webrtc.node"]) {
    paths.push(fileURLToPath(new URL(rel, import.meta.url)));
  }
  return paths;
}

/** Debian packages for the shared libraries the addon links (and will link: the encoder's). */
const DEBIAN_PACKAGE_OF: Record<string, string> = {
  "libpipewire-0.3.so.0": "libpipewire-0.3-0",
  "libavcodec.so.59": "libavcodec59",
  "libavutil.so.57": "libavutil57",
  "libswscale.so.6": "libswscale6",
  "libx264.so.164": "libx264-164",
  "libva.so.2": "libva2",
  "libopenh264.so.7": "libopenh264-7",
  "libstdc++.so.6": "libstdc++6",
};

let cached: WlWebrtcAddon | undefined;

/**
 * Loads the native addon once. Throws UnsupportedError that says what to run or install when the
 * addon was not built, was built for another Node, or a system library is missing.
 */
export function loadAddon(): WlWebrtcAddon {
  if (cached) return cached;
  const paths = candidatePaths();
  const path = paths.find((p) => existsSync(p));
  if (path === undefined) {
    throw new UnsupportedError(
      `the native addon is not built (looked for ${paths.join(", ")}): run scripts/setup.sh, ` +
        `or "source scripts/env.sh && npx node-gyp rebuild --directory native"`,
    );
  }
  const require = createRequire(import.meta.url);
  try {
    cached = require(path) as WlWebrtcAddon;
  } catch (err) {
    throw explainLoadError(path, err);
  }
  return cached;
}

/** Turns a dlopen/ABI failure into an actionable UnsupportedError. Exported for tests. */
export function explainLoadError(path: string, err: unknown): UnsupportedError {
  const msg = errorMessage(err);
  const lib = /([\w.+-]+\.so[\w.]*): cannot open shared object file/.exec(msg)?.[1];
  if (lib !== undefined) {
    const pkg = DEBIAN_PACKAGE_OF[lib];
    const what = pkg ? `apt-get install ${pkg}` : `install the package that provides ${lib} (apt-file search ${lib})`;
    return new UnsupportedError(`the native addon needs ${lib}, which is missing: ${what} (or run scripts/setup.sh)`, {
      cause: err,
    });
  }
  if (/NODE_MODULE_VERSION|was compiled against a different Node\.js version/.test(msg)) {
    return new UnsupportedError(
      `the native addon at ${path} was built for another Node.js than ${process.version}: rebuild it with ` +
        `"source scripts/env.sh && npx node-gyp rebuild --directory native" (scripts/setup.sh does this)`,
      { cause: err },
    );
  }
  return new UnsupportedError(`cannot load the native addon at ${path}: ${msg}; rebuild it with scripts/setup.sh`, {
    cause: err,
  });
}
