import { loadAddon } from "../native/addon.js";
import type { NativeDiffResult } from "../native/addon.js";

export interface TileDiffGeometry {
  width: number;
  height: number;
  /** Bytes per row of both buffers; at least width * 4. Default width * 4. */
  stride?: number;
  /** Default 64. */
  tileSize?: number;
  /** When given, each row of `cur` is also copied here (tightly packed, width * 4 per row): the fused
   *  copy-and-compare the capture stage runs on every frame. */
  dst?: Buffer;
}

/**
 * Runs the native tile differ (the capture stage's damage source when the compositor sends none) on
 * two 32-bit frames in JS buffers. For tests and benches; capture itself never copies frames into JS.
 */
export function diffTiles(prev: Buffer, cur: Buffer, g: TileDiffGeometry): NativeDiffResult {
  const stride = g.stride ?? g.width * 4;
  const tileSize = g.tileSize ?? 64;
  for (const [k, v] of Object.entries({ width: g.width, height: g.height, stride, tileSize })) {
    if (!Number.isInteger(v) || v < 0 || v > 0x7fffffff) throw new TypeError(`diffTiles: ${k} must be a non-negative integer`);
  }
  if (tileSize < 1) throw new TypeError("diffTiles: tileSize must be >= 1");
  if (stride < g.width * 4) throw new TypeError(`diffTiles: stride ${stride} < width * 4 (${g.width * 4})`);
  const need = g.height === 0 ? 0 : stride * (g.height - 1) + g.width * 4;
  if (prev.length < need || cur.length < need)
    throw new TypeError(`diffTiles: buffers of ${prev.length} and ${cur.length} bytes, need ${need}`);
  if (g.dst !== undefined && g.dst.length < g.width * 4 * g.height)
    throw new TypeError(`diffTiles: dst of ${g.dst.length} bytes, need ${g.width * 4 * g.height}`);
  return loadAddon().diffTiles(prev, cur, g.width, g.height, stride, tileSize, g.dst);
}
