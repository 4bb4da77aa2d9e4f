import { crc32, deflateSync } from "node:zlib";

/**
 * Encodes 32-bit pixels as an RGB PNG. `format` names the byte order in memory as SPA does:
 * "BGRx"/"BGRA" (DRM XRGB8888/ARGB8888 on little-endian), "RGBx"/"RGBA", "xRGB"/"ARGB", "xBGR"/"ABGR".
 */
export function encodePng(data: Buffer, width: number, height: number, stride: number, format: string): Buffer {
  const order: Record<string, [number, number, number]> = {
    BGRx: [2, 1, 0], BGRA: [2, 1, 0], RGBx: [0, 1, 2], RGBA: [0, 1, 2],
    xRGB: [1, 2, 3], ARGB: [1, 2, 3], xBGR: [3, 2, 1], ABGR: [3, 2, 1],
  };
  const o = order[format];
  if (!o) throw new TypeError(`encodePng: unsupported pixel format ${format}`);
  const [ri, gi, bi] = o;
  const raw = Buffer.allocUnsafe((width * 3 + 1) * height);
  let p = 0;
  for (let y = 0; y < height; y++) {
    raw[p++] = 0; // filter: none
    let s = y * stride;
    for (let x = 0; x < width; x++, s += 4) {
      raw[p++] = data[s + ri]!;
      raw[p++] = data[s + gi]!;
      raw[p++] = data[s + bi]!;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(raw, { level: 3 })),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

function chunk(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(body.length, 0);
  head.write(type, 4, "ascii");
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), body])) >>> 0, 0);
  return Buffer.concat([head, body, crc]);
}
