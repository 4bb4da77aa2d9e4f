// `npm run bench:capture`: the capture stage's figures in one run.
//   1. capture-pipewire: PipeWire `process` -> frame available to the next stage, and CPU, at 1080p60.
//   2. capture-tiles: the tile comparison's cost per frame at 1080p and 4K (target < 1 ms at 1080p).
// Each part prints its own table; the last line here is one JSON object holding both results.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

function run(script: string): unknown {
  const path = fileURLToPath(new URL(script, import.meta.url));
  const r = spawnSync(process.execPath, [path], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], timeout: 300_000 });
  process.stdout.write(r.stdout);
  if (r.status !== 0) throw new Error(`${script} exited ${r.status}`);
  const last = r.stdout.trim().split("\n").pop() ?? "";
  return JSON.parse(last) as unknown;
}

const pipewire = run("./capture-pipewire.js");
const tiles = run("./capture-tiles.js");
console.log(JSON.stringify({ bench: "capture", pipewire, tiles }));
