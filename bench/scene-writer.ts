/**
 * A bench scene: runs inside a foot terminal on the headless desktop and changes the screen at a fixed
 * frame rate, so that every bench step encodes the same frames whatever else the machine does (a scene
 * that redraws as fast as it can renders faster or slower with the load, and the encoder's work follows).
 *   node dist/bench/scene-writer.js <small|full> <fps>
 * small: one line of 12 digits changes per frame. full: every cell of the screen gets a new random
 * character per frame (nothing for motion search to reuse: x264 sits at its bitrate target).
 * Each frame is one synchronized update (DEC mode 2026, which foot honours): foot renders it whole, once,
 * never half of it. The ticks are on an absolute schedule; one that falls a whole period behind, or finds
 * the previous frame still unwritten, is skipped, never made up in a burst.
 */
import { randomBytes } from "node:crypto";

const mode = process.argv[2] ?? "full";
const fps = Number(process.argv[3] ?? "30");
if (!["small", "full"].includes(mode) || !(fps > 0 && fps <= 240)) {
  process.stderr.write("usage: scene-writer.js <small|full> <fps 1..240>\n");
  process.exit(2);
}
const BEGIN = "\x1b[?2026h", END = "\x1b[?2026l";
const out = process.stdout;
const cols = (): number => Math.max(1, out.columns || 200);
const rows = (): number => Math.max(1, out.rows || 50);
const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

function frame(i: number): string {
  if (mode === "small") return `${BEGIN}\r${String(i).padStart(12, "0")}${END}`;
  const c = cols(), r = rows();
  const bytes = randomBytes(c * r);
  const lines: string[] = [];
  for (let y = 0; y < r; y++) {
    let s = "";
    for (let x = 0; x < c; x++) s += B64[bytes[y * c + x]! & 63];
    lines.push(s);
  }
  // Home, then every row overwritten (no scrolling: the last row's newline would scroll the screen).
  return `${BEGIN}\x1b[H${lines.join("\r\n")}${END}`;
}

out.write("\x1b[?25l"); // no blinking text cursor: it would add frames of its own
const period = 1000 / fps;
let next = performance.now();
let i = 0;
out.on("error", () => process.exit(0)); // the terminal went away
const tick = (): void => {
  // The terminal not keeping up (its pty full): this frame is skipped, not queued behind the others.
  i++;
  if (out.writableLength === 0) out.write(frame(i));
  next += period;
  const now = performance.now();
  if (next < now - period) next = now; // fell behind by a whole frame: skip, do not burst
  setTimeout(tick, Math.max(0, next - now));
};
tick();
