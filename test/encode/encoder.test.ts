// The encode stage's contract on frames fed through a FrameFeeder (exact control over content and
// timing): probe, options, profiles, resize, the newest-frame-wins and bounded-queue rules, metrics,
// teardown. Real encoders (libx264, OpenH264) and a real decoder (libavcodec via ffmpeg) throughout.
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { after, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Registry } from "prom-client";

import { VideoEncoder } from "../../agent/encode/encoder.js";
import { EncodeMetrics } from "../../agent/encode/metrics.js";
import { firstAvailable, formatProbes, probeEncoders } from "../../agent/encode/probe.js";
import { silentLogger } from "../../agent/log/logger.js";
import { loadAddon, type FrameFeeder } from "../../agent/native/addon.js";
import { UnsupportedError } from "../../agent/util/errors.js";
import { collect, decode, encodeConfig, nextFrame, psnrYuv420, toYuv420 } from "./helpers.js";

const log = silentLogger();
const dir = mkdtempSync("/tmp/wl-encode-unit-");
after(() => rmSync(dir, { recursive: true, force: true }));

/** A busy BGRx picture: a moving gradient with a grid of "glyphs" (pseudo-random bytes). */
function picture(w: number, h: number, t: number): Buffer {
  const b = Buffer.allocUnsafe(w * h * 4);
  let seed = (t * 2654435761) >>> 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * 4;
      seed = (seed * 1664525 + 1013904223) >>> 0;
      const glyph = ((x >> 3) + (y >> 4) + t) % 5 === 0 ? seed >>> 24 : 0;
      b[i] = (x + t * 4) & 255;
      b[i + 1] = (y + glyph) & 255;
      b[i + 2] = ((x ^ y) + t) & 255;
      b[i + 3] = 255;
    }
  }
  return b;
}

function feeder(): FrameFeeder {
  return new (loadAddon().FrameFeeder)();
}

function threads(): number {
  return readdirSync("/proc/self/task").length;
}

describe("encoder probe and options", () => {
  test("the probe says which backends work here and why the others do not", () => {
    const probes = probeEncoders();
    assert.deepEqual(probes.map((p) => p.name), ["vaapi", "nvenc", "x264", "openh264"]);
    for (const p of probes) assert.equal(p.compiled, true, `${p.name} is compiled in`);
    const by = Object.fromEntries(probes.map((p) => [p.name, p]));
    assert.equal(by.x264?.available, true, by.x264?.reason);
    assert.equal(by.openh264?.available, true, by.openh264?.reason);
    // This machine has no GPU: the probe must say so, not pretend.
    assert.equal(by.vaapi?.available, false);
    assert.match(by.vaapi?.reason ?? "", /\/dev\/dri/);
    assert.equal(by.nvenc?.available, false);
    assert.match(by.nvenc?.reason ?? "", /libcuda|nvidia/i);
    assert.equal(by.x264?.caps.bitrateWithoutIdr, true);
    assert.equal(by.vaapi?.caps.zeroCopyDmabuf, true);
    assert.equal(firstAvailable(probes, ["vaapi", "nvenc", "x264", "openh264"]), "x264");
    console.log(`# ${formatProbes(probes).split("\n").join("\n# ")}`);
  });

  test("bad options are TypeErrors; no usable backend is an UnsupportedError saying why", async () => {
    const f = feeder();
    try {
      const capture = { nativeFrameSource: f };
      await assert.rejects(VideoEncoder.open({ capture, config: encodeConfig({ bitrate_kbps: 1 }), log, width: 64, height: 64 }), TypeError);
      await assert.rejects(VideoEncoder.open({ capture, config: encodeConfig({ backends: [] }), log, width: 64, height: 64 }), TypeError);
      await assert.rejects(VideoEncoder.open({ capture, config: encodeConfig(), log, width: 63, height: 64 }), TypeError);
      await assert.rejects(VideoEncoder.open({ capture, config: encodeConfig(), log }), TypeError);
      await assert.rejects(VideoEncoder.open({ capture: {} as never, config: encodeConfig(), log, width: 64, height: 64 }), TypeError);
      await assert.rejects(
        VideoEncoder.open({ capture, config: encodeConfig({ backends: ["vaapi", "nvenc"] }), log, width: 64, height: 64 }),
        (err: unknown) => {
          assert.ok(err instanceof UnsupportedError, String(err));
          assert.match(err.message, /vaapi: no \/dev\/dri/);
          assert.match(err.message, /nvenc: libcuda/);
          return true;
        },
      );
    } finally {
      f.close();
    }
  });
});

describe("encoding fed frames", { timeout: 120_000 }, () => {
  test("profiles: constrained baseline by default, main when asked; the SPS is what format reports", async () => {
    for (const [profile, backends, re] of [
      ["constrained_baseline", ["x264"], /^42c0/],
      ["main", ["x264"], /^4d[04]0/],
      ["constrained_baseline", ["openh264"], /^42c0/],
    ] as const) {
      const f = feeder();
      const enc = await VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig({ profile, backends: [...backends] }), log, width: 320, height: 240 });
      try {
        assert.match(enc.format?.profileLevelId ?? "", re, `${backends[0]} ${profile}: ${enc.format?.profileLevelId}`);
        assert.equal(enc.format?.packetizationMode, 1);
        const first = nextFrame(enc, 5000);
        f.push(picture(320, 240, 0), 320, 240, 320 * 4, "BGRx", null);
        const fr = await first;
        assert.ok(fr.keyframe);
        const decoded = await decode(fr.data, dir);
        assert.equal(decoded.width, 320);
        assert.equal(decoded.height, 240);
        assert.match(decoded.profile, profile === "main" ? /^Main$/ : /Baseline/);
      } finally {
        enc.close();
        f.close();
      }
    }
  });

  test("intra refresh: no IDR after the first unless asked for; the stream decodes", async () => {
    const f = feeder();
    const enc = await VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig({ intra_refresh: true, max_fps: 30, refresh_interval_ms: 0 }), log, width: 320, height: 240 });
    const c = collect(enc);
    try {
      for (let t = 0; t < 40; t++) {
        f.push(picture(320, 240, t), 320, 240, 320 * 4, "BGRx", null);
        await nextFrame(enc, 3000);
        if (t === 30) enc.requestKeyframe("api");
      }
      const frames = c.stop();
      const keys = frames.map((fr, k) => (fr.keyframe ? k : -1)).filter((k) => k >= 0);
      assert.equal(keys[0], 0);
      assert.equal(keys.length, 2, `IDRs at ${keys.join(",")}`);
      assert.ok(keys[1]! >= 31 && keys[1]! <= 32);
      const decoded = await decode(Buffer.concat(frames.map((fr) => fr.data)), dir);
      assert.equal(decoded.frames, 40);
    } finally {
      c.stop();
      enc.close();
      f.close();
    }
  });

  test("a resize reopens the encoder: new format, an IDR of the new size", async () => {
    const f = feeder();
    const enc = await VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig(), log, width: 640, height: 360 });
    const formats: { width: number; height: number }[] = [];
    enc.on("format", (fmt) => formats.push({ width: fmt.width, height: fmt.height }));
    const c = collect(enc);
    try {
      for (let t = 0; t < 3; t++) {
        f.push(picture(640, 360, t), 640, 360, 640 * 4, "BGRx", null);
        await nextFrame(enc, 3000);
      }
      f.push(picture(320, 240, 9), 320, 240, 320 * 4, "BGRx", null);
      const fr = await nextFrame(enc, 3000);
      assert.equal(fr.width, 320);
      assert.ok(fr.keyframe, "the first frame of the new size is an IDR");
      assert.deepEqual(formats, [{ width: 320, height: 240 }]);
      assert.equal(enc.stats().reinits, 1);
      const frames = c.stop();
      const decoded = await decode(frames.at(-1)!.data, dir);
      assert.equal(decoded.width, 320);
    } finally {
      c.stop();
      enc.close();
      f.close();
    }
  });

  test("two encoders on one source (a lower rung): each its own mailbox; the scaled one is half size and follows a resize; same RTP clock; closing one leaves the other", async () => {
    const f = feeder();
    const main = await VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig({ max_fps: 240 }), log, width: 640, height: 360 });
    const cm = collect(main);
    let low: VideoEncoder | undefined;
    try {
      // Frames already published before the rung opened: the rung starts from the newest one at once.
      f.push(picture(640, 360, 0), 640, 360, 640 * 4, "BGRx", null);
      await nextFrame(main, 3000);
      low = await VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig({ max_fps: 240 }), log, width: 640, height: 360, outputScale: 0.5, bitrateBps: 500_000 });
      assert.equal(low.targetBitrate, 500_000);
      const cl = collect(low);
      const first = await nextFrame(low, 3000);
      assert.ok(first.keyframe, "the rung's first frame is an IDR");
      assert.deepEqual([first.width, first.height], [320, 180]);
      for (let t = 1; t <= 5; t++) {
        f.push(picture(640, 360, t), 640, 360, 640 * 4, "BGRx", null);
        await Promise.all([nextFrame(main, 3000), nextFrame(low, 3000)]);
      }
      // A resize: the rung follows, scaled (rounded down to even).
      f.push(picture(322, 242, 9), 322, 242, 322 * 4, "BGRx", null);
      const [rm, rl] = await Promise.all([nextFrame(main, 3000), nextFrame(low, 3000)]);
      assert.deepEqual([rm.width, rm.height], [322, 242]);
      assert.deepEqual([rl.width, rl.height], [160, 120]);
      assert.ok(rl.keyframe);
      const mf = cm.stop().filter((x) => !x.refresh);
      const lf = cl.stop().filter((x) => !x.refresh);
      // Both encoders stamp a source frame alike (RTP time from the capture clock, not per encoder).
      const mainTs = new Set(mf.map((x) => x.rtpTimestamp));
      const common = lf.filter((x) => mainTs.has(x.rtpTimestamp)).length;
      assert.ok(common >= 6, `${common} of ${lf.length} rung frames share their RTP time with the main encoder's`);
      const decodedLow = await decode(Buffer.concat(lf.slice(0, -1).map((x) => x.data)), dir);
      assert.deepEqual([decodedLow.width, decodedLow.height], [320, 180]);
      // Each has its own drop count and damage: the rung saw every frame too.
      assert.ok(low.stats().framesIn >= 7, `rung took ${low.stats().framesIn} frames`);
      low.close();
      f.push(picture(322, 242, 10), 322, 242, 322 * 4, "BGRx", null);
      const after = await nextFrame(main, 3000);
      assert.equal(after.width, 322, "the main encoder goes on after the rung closed");
    } finally {
      cm.stop();
      low?.close();
      main.close();
      f.close();
    }
  });

  test("outputScale and bitrateBps are validated", async () => {
    const f = feeder();
    try {
      for (const outputScale of [0, 0.05, 1.5, Number.NaN]) {
        await assert.rejects(VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig(), log, width: 64, height: 64, outputScale }), TypeError);
      }
      await assert.rejects(VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig(), log, width: 64, height: 64, bitrateBps: 10 }), TypeError);
    } finally {
      f.close();
    }
  });

  test("newest frame wins: frames arriving while the encoder is busy are dropped and counted, never queued", async () => {
    const f = feeder();
    const W = 1920;
    const H = 1080;
    const frames = Array.from({ length: 4 }, (_, t) => picture(W, H, t));
    const enc = await VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig({ max_fps: 240, refresh_interval_ms: 0 }), log, width: W, height: H, threads: 1 });
    const c = collect(enc);
    try {
      // Pushed back to back (~1 ms apart), far faster than 1080p encodes on one thread.
      for (let i = 0; i < 40; i++) f.push(frames[i % 4]!, W, H, W * 4, "BGRx", null);
      // Until the last frame was taken and its unit reached JS (a loaded 2-core machine is slow).
      const deadline = performance.now() + 10_000;
      let s = enc.stats();
      while ((s.framesIn + s.dropped.busy < 40 || c.frames.length < s.framesEncoded) && performance.now() < deadline) {
        await sleep(50);
        s = enc.stats();
      }
      await sleep(100);
      const out = c.stop();
      s = enc.stats();
      assert.ok(s.dropped.busy > 0, `busy drops ${s.dropped.busy}`);
      assert.equal(s.framesIn + s.dropped.busy, 40, "every pushed frame was either taken or counted as dropped");
      assert.ok(out.length < 40 && out.length === s.framesEncoded);
      // The last frame pushed is always the last one encoded: the newest wins.
      const seqs = out.map((fr) => fr.seq);
      for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1]! + 1);
    } finally {
      enc.close();
      f.close();
    }
  });

  test("max_fps paces the encoder: faster frames are replaced, not queued", async () => {
    const f = feeder();
    const pics = Array.from({ length: 8 }, (_, t) => picture(320, 240, t));
    const enc = await VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig({ max_fps: 20, refresh_interval_ms: 0 }), log, width: 320, height: 240 });
    const c = collect(enc);
    try {
      const t0 = performance.now();
      let i = 0;
      while (performance.now() - t0 < 2000) {
        f.push(pics[i++ % pics.length]!, 320, 240, 320 * 4, "BGRx", null);
        await sleep(8);
      }
      await sleep(100);
      const n = c.stop().length;
      const s = enc.stats();
      assert.ok(n >= 30 && n <= 45, `~20 fps for 2 s: ${n} frames`);
      assert.ok(s.dropped.rate > 0, `rate drops ${s.dropped.rate}`);
    } finally {
      enc.close();
      f.close();
    }
  });

  test("a keyframe asked for on a still screen is made from the last picture, without a new frame or a refresh", async () => {
    const f = feeder();
    // No refresh at all: before, the IDR waited for the next screen change (forever here).
    const enc = await VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig({ refresh_interval_ms: 0 }), log, width: 320, height: 240 });
    const c = collect(enc);
    try {
      f.push(picture(320, 240, 1), 320, 240, 320 * 4, "BGRx", null);
      await nextFrame(enc, 3000);
      f.push(picture(320, 240, 2), 320, 240, 320 * 4, "BGRx", null);
      await nextFrame(enc, 3000);
      await sleep(300);
      assert.equal(c.frames.length, 2, "a still screen makes nothing");
      enc.requestKeyframe("new-viewer");
      const key = await nextFrame(enc, 3000);
      assert.equal(key.keyframe, true);
      await sleep(300);
      const frames = c.stop();
      assert.equal(frames.length, 3, `one IDR, then nothing again: ${frames.length} frames`);
      const decoded = await decode(Buffer.concat(frames.map((fr) => fr.data)), dir);
      assert.equal(decoded.frames, 3);
    } finally {
      c.stop();
      enc.close();
      f.close();
    }
  });

  test("a JS thread that falls behind: the bounded queue drops units and the next one is an IDR", async () => {
    const f = feeder();
    const pics = Array.from({ length: 6 }, (_, t) => picture(320, 240, t));
    const enc = await VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig({ refresh_interval_ms: 0 }), log, width: 320, height: 240 });
    const c = collect(enc);
    try {
      await nextFrame(enc, 3000).catch(() => undefined);
      f.push(pics[0]!, 320, 240, 320 * 4, "BGRx", null);
      await sleep(200);
      // Frames keep coming at 60 fps while this thread is blocked for 1 s: nobody drains the queue.
      const until = performance.now() + 1000;
      let i = 1;
      let next = performance.now();
      while (performance.now() < until) {
        if (performance.now() >= next) {
          f.push(pics[i++ % pics.length]!, 320, 240, 320 * 4, "BGRx", null);
          next += 1000 / 60;
        }
      }
      await sleep(100);
      for (let k = 0; k < 3; k++) {
        f.push(pics[i++ % pics.length]!, 320, 240, 320 * 4, "BGRx", null);
        await sleep(50);
      }
      await sleep(200);
      const out = c.stop();
      const s = enc.stats();
      assert.ok(s.dropped.queueFull > 0, `queue-full drops ${s.dropped.queueFull}`);
      const gap = out.findIndex((fr, k) => k > 0 && fr.seq !== out[k - 1]!.seq + 1);
      assert.ok(gap > 0, `a seq gap: ${out.map((fr) => fr.seq).join(",")}`);
      assert.ok(out[gap]!.keyframe, "the unit after the gap is an IDR");
      // Whatever reached JS still decodes as one stream.
      const decoded = await decode(Buffer.concat(out.map((fr) => fr.data)), dir);
      assert.equal(decoded.frames, out.length);
    } finally {
      enc.close();
      f.close();
    }
  });

  test("a keyframe request on a still screen wakes the encoder thread at once (no poll): ten chained requests, ten IDR refreshes well inside one poll period each", async () => {
    // No refresh (refresh_interval_ms 0) and no new frame: the thread sleeps in its mailbox wait, whose
    // cap is 100 ms (kMaxWaitNs, native/src/encode/pipeline.cc). Each request is made the moment the
    // previous IDR arrives, i.e. just after the thread went back to sleep: a thread that only looked at
    // requests when its wait ran out would answer each ~100 ms later (>= ~950 ms for ten, whatever the
    // load); the request's kick ends the wait, so each costs one small IDR encode.
    const f = feeder();
    const enc = await VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig({ refresh_interval_ms: 0, keyframe_min_interval_ms: 0 }), log, width: 320, height: 240 });
    try {
      f.push(picture(320, 240, 1), 320, 240, 320 * 4, "BGRx", null);
      await nextFrame(enc, 3000);
      await sleep(300); // the thread is asleep on a still screen
      const c = collect(enc);
      const N = 10;
      const latencies: number[] = [];
      const t0 = performance.now();
      for (let i = 0; i < N; i++) {
        const tReq = performance.now();
        const idr = nextFrame(enc, 3000, (fr) => fr.keyframe);
        enc.requestKeyframe("api");
        const fr = await idr;
        latencies.push(performance.now() - tReq);
        assert.equal(fr.refresh, true, "the still screen's picture, encoded again as an IDR");
      }
      const total = performance.now() - t0;
      await sleep(50); // anything more the thread would send (stats count a unit after JS may have it)
      const units = c.stop();
      const s = enc.stats();
      console.log(`# ${N} chained keyframe requests on a still screen: ${total.toFixed(0)} ms, each ${latencies.map((l) => l.toFixed(0)).join(" ")} ms`);
      assert.equal(units.length, N, "one unit per request, nothing else");
      assert.ok(units.every((u) => u.keyframe && u.refresh === true), "each an IDR refresh");
      assert.equal(s.framesIn, 1, "no frame came in meanwhile: the kicks woke the thread, not frames");
      assert.ok(total < 500, `${N} requests answered in ${total.toFixed(0)} ms: the thread waited out its poll instead of being woken`);
    } finally {
      enc.close();
      f.close();
    }
  });

  test("DMA-BUF frames reaching a software backend: LINEAR ones are mmapped and encoded, tiled ones make the source renegotiate to shared memory", async () => {
    // No GPU here: FrameFeeder.pushMemfdAsDmabuf publishes a memfd as a DMA-BUF frame (dup'ed fd,
    // offset 4096, padded rows, no pixels), the shape capture gives DMA-BUF frames. x264 cannot import
    // it, so the pipeline takes the software path of native/src/encode/dmabuf_map.h.
    const fds0 = readdirSync("/proc/self/fd").length;
    const f = feeder();
    const pics = [picture(320, 240, 1), picture(320, 240, 2), picture(320, 240, 3)];
    // A generous bitrate: the PSNR checks are about which pixels were read, not about rate control
    // (a P frame of a wholly new busy picture would otherwise arrive coarse by design).
    const enc = await VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig({ refresh_interval_ms: 0, bitrate_kbps: 60_000, keyframe_min_interval_ms: 0 }), log, width: 320, height: 240 });
    const c = collect(enc);
    try {
      assert.equal(enc.backend, "x264");
      f.pushMemfdAsDmabuf(pics[0]!, 320, 240, 320 * 4, "BGRx", "linear");
      await nextFrame(enc, 3000);
      const linear = c.frames.slice();
      const decoded = await decode(Buffer.concat(linear.map((fr) => fr.data)), dir);
      const ref = await toYuv420(pics[0]!, 320, 240, dir);
      const p = psnrYuv420(decoded.last, ref, 320, 240);
      assert.ok(p.y >= 30, `the LINEAR mapping was read with its offset and stride: Y PSNR ${p.y.toFixed(1)} dB`);
      assert.equal(enc.stats().dropped.dmabuf, 0);
      assert.equal(f.sharedMemoryRequests().count, 0);

      f.pushMemfdAsDmabuf(pics[1]!, 320, 240, 320 * 4, "BGRx", "x-tiled");
      await sleep(400);
      assert.equal(c.frames.length, linear.length, "a tiled DMA-BUF is not encoded");
      assert.equal(enc.stats().dropped.dmabuf, 1);
      const req = f.sharedMemoryRequests();
      assert.equal(req.count, 1);
      assert.match(req.lastReason, /^x264 cannot read the capture's DMA-BUFs \(DMA-BUF modifier 0x100000000000001 is not LINEAR/);

      // Shared memory after the renegotiation: encoding goes on (the next frame converts in full). An
      // IDR, so its quality does not depend on predicting a wholly new busy picture (ultrafast P frames
      // have only 16x16 intra).
      enc.requestKeyframe("api");
      f.push(pics[2]!, 320, 240, 320 * 4, "BGRx", null);
      const after = await nextFrame(enc, 3000);
      assert.ok(after.keyframe);
      const all = c.stop();
      const d2 = await decode(Buffer.concat(all.map((fr) => fr.data)), dir);
      assert.equal(d2.frames, all.length);
      // This IDR gets a smaller budget than the first (rate control; the same with shared memory only:
      // 27.7 dB both ways): check it is pic2, not a stale picture.
      const p2 = psnrYuv420(d2.last, await toYuv420(pics[2]!, 320, 240, dir), 320, 240);
      const stale = psnrYuv420(d2.last, await toYuv420(pics[1]!, 320, 240, dir), 320, 240);
      assert.ok(p2.y >= 25 && p2.y > stale.y + 5, `shared-memory frame after the refusal: Y PSNR ${p2.y.toFixed(1)} dB (vs the refused picture ${stale.y.toFixed(1)})`);
    } finally {
      c.stop();
      enc.close();
      f.close();
    }
    assert.equal(readdirSync("/proc/self/fd").length, fds0, "every dup'ed DMA-BUF fd and mapping was released");
  });

  test("metrics: per-stage histograms, frames, drops by reason, active backend, produced bitrate", async () => {
    const registry = new Registry();
    const metrics = new EncodeMetrics([registry]);
    const f = feeder();
    const enc = await VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig({ max_fps: 10, refresh_interval_ms: 0 }), log, metrics, width: 320, height: 240 });
    try {
      for (let t = 0; t < 30; t++) {
        f.push(picture(320, 240, t), 320, 240, 320 * 4, "BGRx", null);
        await sleep(20);
      }
      await sleep(200);
      const text = await registry.metrics();
      assert.match(text, /wl_webrtc_encode_backend\{backend="x264"\} 1/);
      assert.match(text, /wl_webrtc_encode_duration_seconds_count [1-9]/);
      assert.match(text, /wl_webrtc_encode_wait_seconds_count [1-9]/);
      assert.match(text, /wl_webrtc_encode_convert_seconds_count [1-9]/);
      assert.match(text, /wl_webrtc_encode_frames_total\{kind="key"\} 1/);
      assert.match(text, /wl_webrtc_encode_dropped_frames_total\{reason="rate"\} [1-9]/);
      assert.match(text, /wl_webrtc_encode_target_bitrate_bps 6000000/);
      const produced = /wl_webrtc_encode_bitrate_bps (\d+)/.exec(text);
      assert.ok(produced && Number(produced[1]) > 0, "produced bitrate");
      assert.match(text, /wl_webrtc_encode_fallbacks_total\{from="vaapi",to="nvenc"\} 1/);
    } finally {
      enc.close();
      f.close();
    }
    assert.doesNotMatch(await registry.metrics(), /wl_webrtc_encode_backend\{backend="x264"\} 1/, "the closed encoder is no longer active");
  });

  test("open/close cycles leave no threads behind; close emits once", async () => {
    const base = threads();
    for (let i = 0; i < 10; i++) {
      const f = feeder();
      const enc = await VideoEncoder.open({ capture: { nativeFrameSource: f }, config: encodeConfig({ backends: i % 2 ? ["openh264"] : ["x264"] }), log, width: 320, height: 240 });
      let closes = 0;
      enc.on("close", () => closes++);
      f.push(picture(320, 240, i), 320, 240, 320 * 4, "BGRx", null);
      await nextFrame(enc, 3000);
      enc.close();
      enc.close();
      f.close();
      assert.equal(closes, 1);
    }
    await sleep(100);
    assert.ok(threads() <= base + 1, `threads ${base} -> ${threads()}`);
  });
});
