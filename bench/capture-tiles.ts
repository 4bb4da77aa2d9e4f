// Cost of the capture stage's tile comparison per frame (native, one core): 1080p and 4K, with no
// change, a small change (a 40x20 text cursor blink) and a full change. Target: < 1 ms at 1080p.
//   node dist/bench/capture-tiles.js [--iterations N]
// The last line of output is one JSON object with every figure.
import { diffTiles } from "../agent/capture/tiles.js";

const iterArg = process.argv.indexOf("--iterations");
const iterations = iterArg > 0 ? Number(process.argv[iterArg + 1]) : 200;

interface Row {
  resolution: string;
  change: "none" | "small" | "full";
  /** compare: the differ alone; copy+compare: the fused pass capture runs on each frame (it copies the
   *  shared-memory frame into native memory while comparing). */
  mode: "compare" | "copy+compare";
  tileSize: number;
  medianMs: number;
  p95Ms: number;
  minMs: number;
  rects: number;
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

function bench(width: number, height: number, change: Row["change"], mode: Row["mode"], tileSize: number): Row {
  const stride = width * 4;
  // Two frames per slot, several slots: each compare reads memory the previous one did not, as in
  // capture (a fresh shared-memory frame against the last published one), not a cache-hot loop.
  const slots = 3;
  const prevs: Buffer[] = [];
  const curs: Buffer[] = [];
  for (let s = 0; s < slots; s++) {
    const prev = Buffer.alloc(stride * height);
    for (let i = 0; i < prev.length; i += 4) prev.writeUInt32LE((i * 2654435761) >>> 0, i);
    const cur = Buffer.from(prev);
    if (change === "small") {
      for (let y = 500; y < 520; y++) cur.fill(0xff, y * stride + 900 * 4, y * stride + 940 * 4);
    } else if (change === "full") {
      for (let i = 0; i < cur.length; i++) cur[i] = cur[i]! ^ 0x01;
    }
    prevs.push(prev);
    curs.push(cur);
  }
  const dst = mode === "copy+compare" ? Buffer.alloc(stride * height) : undefined;
  const times: number[] = [];
  let rects = 0;
  for (let i = 0; i < iterations + 5; i++) {
    const r = diffTiles(prevs[i % slots]!, curs[i % slots]!, { width, height, stride, tileSize, ...(dst ? { dst } : {}) });
    if (i >= 5) times.push(r.elapsedNs / 1e6);  // the first few warm the page tables
    rects = r.rects.length;
  }
  times.sort((a, b) => a - b);
  return {
    resolution: `${width}x${height}`,
    change,
    mode,
    tileSize,
    medianMs: +quantile(times, 0.5).toFixed(3),
    p95Ms: +quantile(times, 0.95).toFixed(3),
    minMs: +times[0]!.toFixed(3),
    rects,
  };
}

const rows: Row[] = [];
for (const [w, h] of [[1920, 1080], [3840, 2160]] as const) {
  for (const mode of ["compare", "copy+compare"] as const) for (const change of ["none", "small", "full"] as const) {
    const row = bench(w, h, change, mode, 64);
    rows.push(row);
    console.log(
      `${row.resolution.padEnd(10)} ${mode.padEnd(12)} ${change.padEnd(6)} tile ${row.tileSize}: median ${row.medianMs.toFixed(3)} ms, ` +
        `p95 ${row.p95Ms.toFixed(3)} ms, min ${row.minMs.toFixed(3)} ms, ${row.rects} rect(s)`,
    );
  }
}
const at1080 = rows.filter((r) => r.resolution === "1920x1080" && r.mode === "compare");
const worst1080 = Math.max(...at1080.map((r) => r.medianMs));
console.log(`target < 1 ms at 1080p (tile comparison): ${worst1080 < 1 ? "met" : "NOT met"} (worst median ${worst1080.toFixed(3)} ms)`);
console.log(JSON.stringify({ bench: "capture-tiles", iterations, node: process.version, targetMetAt1080p: worst1080 < 1, rows }));
