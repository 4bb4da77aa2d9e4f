// The encode stage on real frames: the agent's headless desktop (sway + PipeWire + portal), captured
// through the portal's PipeWire fd, encoded by the native pipeline, decoded back with libavcodec.
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { VideoEncoder } from "../../agent/encode/encoder.js";
import type { EncodedFrame } from "../../agent/encode/types.js";
import { silentLogger } from "../../agent/log/logger.js";
import { collect, decode, encodeConfig, nextFrame, psnrYuv420, startDesktopCapture, toYuv420, type DesktopCapture } from "./helpers.js";

const log = silentLogger();
const W = 1280;
const H = 720;

async function stopClient(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  process.kill(child.pid, "SIGTERM");
  await exited;
}

function bits(frames: EncodedFrame[]): number {
  return frames.reduce((n, f) => n + f.data.length * 8, 0);
}

describe("H.264 encoding of the real headless desktop", { timeout: 180_000 }, () => {
  let dc: DesktopCapture;

  before(async () => {
    dc = await startDesktopCapture(W, H, 30);
  });
  after(async () => {
    await dc?.close();
  });

  test("text on the desktop: decodes to the right size with PSNR >= 35 dB at the default bitrate", async () => {
    const enc = await VideoEncoder.open({ capture: dc.capture, config: encodeConfig({ refresh_interval_ms: 700 }), log });
    const c = collect(enc);
    let foot: ChildProcess | undefined;
    try {
      assert.equal(enc.backend, "x264", "no GPU here: x264 is the first available backend");
      assert.match(enc.format?.profileLevelId ?? "", /^42[ce]0[0-9a-f]{2}$/, "constrained baseline");
      foot = await dc.desktop.spawnClient("foot", ["-e", "sh", "-c", "ls -la /usr/lib/x86_64-linux-gnu | head -60; exec sleep 1000"]);
      await nextFrame(enc, 10_000, (f) => !f.keyframe);
      // Once the terminal is static the refresh re-encodes exactly the frame copyFrame() returns.
      await sleep(1500);
      await nextFrame(enc, 5000, (f) => f.refresh === true);
      const source = dc.capture.copyFrame();
      assert.ok(source, "no captured frame");
      const frames = c.stop();
      assert.ok(frames[0]?.keyframe, "the stream starts with an IDR");
      const decoded = await decode(Buffer.concat(frames.map((f) => f.data)), dc.dir);
      assert.equal(decoded.width, W);
      assert.equal(decoded.height, H);
      assert.equal(decoded.frames, frames.length, "every access unit decodes to one picture");
      const ref = await toYuv420(source.data, source.width, source.height, dc.dir);
      const p = psnrYuv420(decoded.last, ref, W, H);
      const kbit = bits(frames) / 1000;
      console.log(`# PSNR y ${p.y.toFixed(2)} u ${p.u.toFixed(2)} v ${p.v.toFixed(2)} avg ${p.avg.toFixed(2)} dB; ${frames.length} frames, ${kbit.toFixed(0)} kbit, profile ${decoded.profile}`);
      assert.ok(p.y >= 35, `Y PSNR ${p.y.toFixed(2)} dB < 35`);
      assert.ok(p.avg >= 35, `average PSNR ${p.avg.toFixed(2)} dB < 35`);
    } finally {
      c.stop();
      enc.close();
      await stopClient(foot);
    }
  });

  test("a static screen produces no encoded frames except the configured refresh", async () => {
    await sleep(300); // the terminal of the previous test is gone; let its last frame pass
    // refresh_max_interval_ms = refresh_interval_ms: a constant interval (no backoff; that rule has a test below).
    const enc = await VideoEncoder.open({ capture: dc.capture, config: encodeConfig({ refresh_interval_ms: 400, refresh_max_interval_ms: 400 }), log });
    try {
      await sleep(500);
      const c = collect(enc);
      const before = enc.stats();
      await sleep(2200);
      const frames = c.stop();
      const s = enc.stats();
      const refreshes = frames.filter((f) => f.refresh === true).length;
      console.log(`# static 2.2 s: ${frames.length} frames (${refreshes} refresh), ${bits(frames)} bits; framesIn ${s.framesIn - before.framesIn}`);
      assert.equal(refreshes, frames.length, "only refresh frames on a static screen");
      assert.ok(frames.length >= 4 && frames.length <= 6, `refresh every 400 ms over 2.2 s: ${frames.length} frames`);
      assert.equal(s.framesIn, before.framesIn, "no new frame came from capture");
    } finally {
      enc.close();
    }
    const quiet = await VideoEncoder.open({ capture: dc.capture, config: encodeConfig({ refresh_interval_ms: 0 }), log });
    try {
      await sleep(300);
      const c = collect(quiet);
      await sleep(1500);
      assert.equal(c.stop().length, 0, "refresh_interval_ms = 0: nothing at all");
    } finally {
      quiet.close();
    }
  });

  test("refreshes of a converged static screen back off x2 up to refresh_max_interval_ms; a change or a keyframe request resets them", async () => {
    const INTERVAL = 200;
    const MAX = 1600;
    const REFINE = Math.min(INTERVAL, 250);
    const enc = await VideoEncoder.open({ capture: dc.capture, config: encodeConfig({ refresh_interval_ms: INTERVAL, refresh_max_interval_ms: MAX }), log });
    const c = collect(enc);
    let foot: ChildProcess | undefined;
    let foot2: ChildProcess | undefined;
    try {
      const convergedBytes = enc.stats().refreshConvergedBytes;
      assert.ok(convergedBytes > 64 && convergedBytes < 1000, `converged threshold at ${W}x${H}: ${convergedBytes} bytes`);
      foot = await dc.desktop.spawnClient("foot", ["-e", "sh", "-c", "ls -la /usr/lib/x86_64-linux-gnu | head -60; exec sleep 1000"]);
      await nextFrame(enc, 10_000, (f) => !f.keyframe && f.refresh !== true);
      // Static: 200 (refine), then 200 until a refresh is converged, then 400, 800, 1600, 1600, ...
      await sleep(8000);
      const s1 = enc.stats();
      assert.equal(s1.refreshNextMs, MAX, "backed off to the cap");
      // A keyframe request on the backed-off screen is answered at once, not at the next refresh.
      const tReq = performance.timeOrigin + performance.now();
      enc.requestKeyframe("api");
      const idr = await nextFrame(enc, 1000, (f) => f.keyframe);
      assert.ok(idr.refresh === true && idr.captureTimeMs - tReq < 250, `IDR refresh ${(idr.captureTimeMs - tReq).toFixed(0)} ms after the request`);
      await sleep(1200);
      // A real change (a second terminal) resets the schedule.
      foot2 = await dc.desktop.spawnClient("foot", ["-e", "sh", "-c", "echo changed; exec sleep 1000"]);
      await sleep(3000);
      const frames = c.stop();
      // Replay the rule over every frame since the first static real frame: the expected gap before each
      // refresh follows from the sizes of the refreshes before it (converged: <= refreshConvergedBytes).
      let refreshes = 0;
      let backoff = 1;
      let checked = 0;
      let capped = 0;
      let afterChange = false;
      const trace: string[] = [];
      for (let i = 1; i < frames.length; i++) {
        const f = frames[i]!;
        const gap = f.captureTimeMs - frames[i - 1]!.captureTimeMs;
        trace.push(`${f.refresh === true ? (f.keyframe ? "K" : "r") : "F"}${gap.toFixed(0)}/${f.data.length}`);
        if (f.refresh !== true) {
          refreshes = 0;
          backoff = 1;
          if (f.captureTimeMs > tReq + 1000) afterChange = true;
          continue;
        }
        if (f.keyframe) {
          // The requested IDR: refined like a change.
          refreshes = 0;
          backoff = 1;
          continue;
        }
        const expected = refreshes === 0 ? REFINE : INTERVAL * backoff;
        // Lower bound: the wait is measured from the end of the previous encode, so never shorter.
        // Upper: encode time of the previous frame + wake-up on a loaded 2-core machine.
        assert.ok(gap >= expected - 5 && gap <= expected + 250, `refresh ${i}: gap ${gap.toFixed(0)} ms, expected ${expected} (${trace.join(" ")})`);
        checked++;
        if (expected === MAX) capped++;
        if (afterChange && expected === REFINE) afterChange = false; // the first refresh after the change was the refine one
        refreshes++;
        const converged = f.data.length <= convergedBytes;
        backoff = converged ? Math.min(backoff * 2, MAX / INTERVAL) : 1;
      }
      console.log(`# backoff trace (kind gap/bytes): ${trace.join(" ")}`);
      assert.ok(capped >= 2, `at least two refreshes at the cap: ${trace.join(" ")}`);
      assert.ok(checked >= 8, `${checked} refresh gaps checked`);
      assert.ok(frames.some((f) => f.refresh !== true && f.captureTimeMs > tReq + 1000), "the change produced real frames");
      assert.equal(afterChange, false, "a refine refresh followed the change");
      const s2 = enc.stats();
      assert.ok(s2.refreshConverged >= 4, `${s2.refreshConverged} converged refreshes`);
    } finally {
      c.stop();
      enc.close();
      await stopClient(foot);
      await stopClient(foot2);
    }
  });

  test("a keyframe request yields an IDR on the next encoded frame; requests are rate-limited", async () => {
    const foot = await dc.desktop.spawnClient("foot", ["-e", "sh", "-c", "while :; do date +%T.%N; sleep 0.01; done"]);
    const enc = await VideoEncoder.open({ capture: dc.capture, config: encodeConfig({ keyframe_min_interval_ms: 500 }), log });
    try {
      await nextFrame(enc, 10_000, (f) => !f.keyframe);
      await sleep(600);
      for (let i = 0; i < 3; i++) {
        const c = collect(enc);
        const t = performance.timeOrigin + performance.now();
        enc.requestKeyframe("pli");
        await nextFrame(enc, 3000, (f) => f.captureTimeMs >= t);
        const frames = c.stop();
        // The request applies to the next frame the encoder starts. Only a frame already inside the
        // encoder when it came (so captured before it) may still be a P frame.
        const key = frames.findIndex((f) => f.keyframe);
        const trace = frames.map((f) => `${f.keyframe ? "K" : "P"}${f.captureTimeMs >= t ? "+" : "-"}`).join(" ");
        assert.ok(key === 0 || (key === 1 && frames[0]!.captureTimeMs < t), `request ${i}: ${trace}`);
        assert.ok(frames.slice(key + 1).every((f) => !f.keyframe), `one IDR per request: ${trace}`);
        const idr = frames[key]!;
        assert.ok(idr.data.includes(Buffer.from([0, 0, 0, 1, 0x67])) || idr.data.includes(Buffer.from([0, 0, 1, 0x67])), "the IDR carries its SPS");
        await sleep(600);
      }
      // Five PLIs in a burst: one IDR at once, the rest merged into one more at the end of the interval.
      const c = collect(enc);
      for (let i = 0; i < 5; i++) enc.requestKeyframe("pli");
      await sleep(1000);
      const keys = c.stop().filter((f) => f.keyframe).length;
      assert.equal(keys, 2, `5 requests within 500 ms gave ${keys} IDRs`);
      assert.equal(enc.stats().keyframeRequestsCoalesced, 4);
    } finally {
      enc.close();
      await stopClient(foot);
    }
  });

  test("a backend forced to fail mid-stream falls back and the stream continues", async () => {
    const foot = await dc.desktop.spawnClient("foot", ["-e", "sh", "-c", "while :; do date +%T.%N; sleep 0.01; done"]);
    const enc = await VideoEncoder.open({ capture: dc.capture, config: encodeConfig({ backends: ["x264", "openh264"] }), log });
    const fallbacks: { from: string; to: string; reason: string }[] = [];
    enc.on("fallback", (f) => fallbacks.push(f));
    let errors = 0;
    enc.on("error", () => errors++);
    const c = collect(enc);
    try {
      await nextFrame(enc, 10_000, (f) => !f.keyframe);
      await sleep(300);
      enc.injectFault();
      const first = await nextFrame(enc, 5000, (f) => f.backend === "openh264");
      assert.ok(first.keyframe, "the new backend starts with an IDR");
      await sleep(1000);
      const frames = c.stop();
      const after = frames.filter((f) => f.backend === "openh264");
      assert.ok(after.length >= 10, `the stream continued: ${after.length} frames from openh264`);
      assert.deepEqual(fallbacks.map((f) => [f.from, f.to]), [["x264", "openh264"]]);
      assert.match(fallbacks[0]!.reason, /injected fault/);
      assert.equal(enc.backend, "openh264");
      assert.equal(errors, 0);
      assert.equal(enc.closed, false);
      const s = enc.stats();
      assert.equal(s.backend, "openh264");
      assert.equal(s.fallbacks, 1);
      // Sequence numbers stay contiguous across the switch (nothing dropped after encoding).
      for (let i = 1; i < frames.length; i++) assert.equal(frames[i]!.seq, frames[i - 1]!.seq + 1);
      // The whole stream, x264 then OpenH264, decodes.
      const decoded = await decode(Buffer.concat(frames.map((f) => f.data)), dc.dir);
      assert.equal(decoded.width, W);
      assert.equal(decoded.frames, frames.length);
    } finally {
      c.stop();
      enc.close();
      await stopClient(foot);
    }
  });

  test("a bitrate change lands within 20 % over 5 s, and libx264 makes it without an IDR", async () => {
    // A terminal flooded with random text: more detail than any of these bitrates can carry.
    const foot = await dc.desktop.spawnClient("foot", ["-e", "sh", "-c", "base64 /dev/urandom"]);
    const enc = await VideoEncoder.open({ capture: dc.capture, config: encodeConfig({ bitrate_kbps: 1500 }), log });
    try {
      await nextFrame(enc, 10_000, (f) => !f.keyframe);
      await sleep(2500);
      const c1 = collect(enc);
      await sleep(3000);
      const before = c1.stop();
      const rateBefore = bits(before) / 3;
      enc.setTargetBitrate(3_000_000);
      const c2 = collect(enc);
      await sleep(5000);
      const frames = c2.stop();
      const rate = bits(frames) / 5;
      const fps = frames.length / 5;
      console.log(`# bitrate: ${(rateBefore / 1000).toFixed(0)} kbit/s at 1500 target -> ${(rate / 1000).toFixed(0)} kbit/s at 3000 target (${fps.toFixed(1)} fps)`);
      assert.ok(Math.abs(rateBefore - 1_500_000) <= 0.2 * 1_500_000, `before: ${rateBefore} bit/s for 1.5 Mbit/s`);
      assert.ok(Math.abs(rate - 3_000_000) <= 0.2 * 3_000_000, `after: ${rate} bit/s for 3 Mbit/s`);
      assert.equal(frames.filter((f) => f.keyframe).length, 0, "no IDR for a bitrate change with libx264");
      assert.equal(enc.stats().bitrateChanges, 1);
      assert.equal(enc.stats().reinits, 0);
    } finally {
      enc.close();
      await stopClient(foot);
    }
  });

  test("closing the capture ends the encoder: close is emitted once", async () => {
    const enc = await VideoEncoder.open({ capture: dc.capture, config: encodeConfig(), log });
    let closes = 0;
    enc.on("close", () => closes++);
    enc.close();
    enc.close();
    assert.equal(closes, 1);
    assert.equal(enc.closed, true);
    assert.throws(() => enc.stats(), /after close/);
  });
});
