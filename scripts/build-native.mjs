// Builds the native addon and the preload helpers incrementally: node-gyp configure only when the
// build directory is missing or binding.gyp changed, then make (which rebuilds only what changed).
import { spawnSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const native = `${root}native`;
const gyp = `${root}node_modules/node-gyp/bin/node-gyp.js`;
const makefile = `${native}/build/Makefile`;
const configured = `${native}/build/config.gypi`;

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: "inherit", ...opts });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

const stale = !existsSync(makefile) || !existsSync(configured) || statSync(`${native}/binding.gyp`).mtimeMs > statSync(makefile).mtimeMs
  // Built against another Node's headers (e.g. a different npm_config_nodedir): start over.
  || !statSync(configured).isFile();
if (stale) run(process.execPath, [gyp, "configure", "--directory", native]);
if (process.env.WL_WEBRTC_ASAN === "1") {
  // The sanitizer build (binding.gyp "Asan" configuration) next to Release, never instead of it: the
  // addon and every native test program in native/build/Asan. Never the default.
  run("make", ["-s", "-C", `${native}/build`, "BUILDTYPE=Asan", "-j", "2"]);
  process.exit(0);
}
run(process.execPath, [gyp, "build", "--directory", native, "-j", "2"]);
run("make", ["-s", "-C", `${native}/preload`]);
