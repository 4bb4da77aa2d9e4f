// The tile differ: the native unit tests (native/test/tiles_test.cc, built by binding.gyp as
// native/build/Release/tiles_test) reported test by test, plus the same differ through the addon.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { diffTiles } from "../../agent/capture/tiles.js";
import { explainLoadError } from "../../agent/native/addon.js";
import { UnsupportedError } from "../../agent/util/errors.js";
import { describeNativeTap } from "../helpers/native-tap.js";

describeNativeTap("native tile differ unit tests (tiles_test)", "tiles_test", { minPlan: 30, timeoutMs: 60_000 });

describe("diffTiles through the addon", () => {
  const w = 1921, h = 1079, stride = w * 4 + 64;
  const base = Buffer.alloc(stride * h);
  for (let i = 0; i < base.length; i++) base[i] = (i * 7) & 0xff;

  test("identical frames: zero damage", () => {
    const r = diffTiles(base, Buffer.from(base), { width: w, height: h, stride });
    assert.deepEqual(r.rects, []);
    assert.equal(r.dirtyTiles, 0);
  });

  test("stride padding is ignored", () => {
    const cur = Buffer.from(base);
    cur.writeUInt8(cur.readUInt8(w * 4 + 10) ^ 0xff, w * 4 + 10);  // inside the padding of row 0
    assert.equal(diffTiles(base, cur, { width: w, height: h, stride }).dirtyTiles, 0);
  });

  test("a one-pixel change in the bottom-right edge tile", () => {
    const cur = Buffer.from(base);
    const at = (h - 1) * stride + (w - 1) * 4;
    cur.writeUInt8(cur.readUInt8(at) ^ 1, at);
    const r = diffTiles(base, cur, { width: w, height: h, stride });
    // 1921 = 30*64 + 1 and 1079 = 16*64 + 55: the corner tile is 1x55.
    assert.deepEqual(r.rects, [{ x: 1920, y: 1024, width: 1, height: 55 }]);
  });

  test("a full change is one rect", () => {
    const cur = Buffer.alloc(stride * h, 0x55);
    const r = diffTiles(base, cur, { width: w, height: h, stride, tileSize: 32 });
    assert.deepEqual(r.rects, [{ x: 0, y: 0, width: w, height: h }]);
  });

  test("the fused copy (as capture uses it) reproduces the new frame", () => {
    const cur = Buffer.from(base);
    cur.fill(0xee, 5 * stride, 5 * stride + 100);
    const dst = Buffer.alloc(w * 4 * h);
    const r = diffTiles(base, cur, { width: w, height: h, stride, dst });
    assert.equal(r.rects.length, 1);
    for (let y = 0; y < h; y += 97) assert.ok(dst.subarray(y * w * 4, (y + 1) * w * 4).equals(cur.subarray(y * stride, y * stride + w * 4)));
  });

  test("bad geometry is a TypeError, checked in TS", () => {
    assert.throws(() => diffTiles(base, base, { width: w, height: h, stride: w * 4 - 1 }), TypeError);
    assert.throws(() => diffTiles(base, Buffer.alloc(10), { width: w, height: h, stride }), TypeError);
    assert.throws(() => diffTiles(base, base, { width: w, height: h, stride, tileSize: 0 }), TypeError);
    assert.throws(() => diffTiles(base, base, { width: 1.5, height: h }), TypeError);
    assert.throws(() => diffTiles(base, base, { width: w, height: h, stride, dst: Buffer.alloc(5) }), TypeError);
  });
});

describe("addon loader errors say what to do", () => {
  test("a missing system library names the Debian package", () => {
    const e = explainLoadError("/x.node", new Error("libpipewire-0.3.so.0: cannot open shared object file: No such file or directory"));
    assert.ok(e instanceof UnsupportedError);
    assert.match(e.message, /apt-get install libpipewire-0\.3-0/);
  });
  test("an ABI mismatch says to rebuild", () => {
    const e = explainLoadError("/x.node", new Error("was compiled against a different Node.js version using NODE_MODULE_VERSION 115"));
    assert.match(e.message, /rebuild/);
  });
});
