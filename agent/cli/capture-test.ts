import { writeFileSync } from "node:fs";
import type { Config } from "../config/schema.js";
import type { Logger } from "../log/logger.js";
import { openSharedDesktop } from "../desktop/index.js";
import { DesktopCapture } from "../capture/desktop-capture.js";
import type { FrameInfo } from "../capture/capture-stream.js";
import { encodePng } from "../util/png.js";
import { WlError } from "../util/errors.js";
import { chooseDmabufCapture, probeEncoders } from "../encode/probe.js";

export interface CaptureTestOptions {
  seconds: number;
  json: boolean;
  snapshot: string | undefined;
  /** On a headless desktop: run a terminal that scrolls text, so there is something to capture. */
  animate: boolean;
}

export interface CaptureTestResult {
  fps: number;
  width: number;
  height: number;
  frames: number;
  bufferType: string | null;
  format: string;
  stride: number;
  seconds: number;
  delivered: number;
  dropped: number;
  unchanged: number;
  damageRatioMean: number;
  damageSources: Record<string, number>;
  latencyUsAvg: number;
  latencyUsMax: number;
  restoreTokenUsed: boolean;
  desktop: "session" | "headless";
  dmabuf: { offered: boolean; reason: string };
}

/**
 * A user's first diagnostic: negotiates with the portal, captures for a while, prints what arrived.
 * Human-readable lines on stdout; with --json the last line is one JSON object.
 */
export async function captureTest(config: Config, opts: CaptureTestOptions, log: Logger): Promise<CaptureTestResult> {
  const desktop = await openSharedDesktop(config.desktop, process.env, log);
  if (!desktop) throw new WlError("usage", 'capture-test needs a desktop, but desktop.mode is "none"');
  let capture: DesktopCapture | undefined;
  try {
    if (opts.animate) {
      if (!desktop.headless) throw new WlError("usage", "--animate works on the agent's own headless desktop only (use --headless)");
      // A terminal printing as fast as it can: every refresh has new text.
      await desktop.headless.spawnClient("foot", ["sh", "-c", "while :; do date +%T.%N; done"], { name: "animate" });
    }
    // The buffers the agent would negotiate: DMA-BUF only for a VA-API encoder on a render node.
    const dmabuf = chooseDmabufCapture(probeEncoders(config.encode.backends), config.encode.backends);
    capture = await DesktopCapture.open({ capture: config.capture, stateDir: config.state_dir, busAddress: desktop.env.DBUS_SESSION_BUS_ADDRESS, log, dmabuf });
    const stream = capture.stream;
    let ratioSum = 0;
    let events = 0;
    const sources: Record<string, number> = {};
    const onFrame = (f: FrameInfo) => {
      ratioSum += f.damageRatio * (f.coalesced + 1);
      events += f.coalesced + 1;
      sources[f.damageSource] = (sources[f.damageSource] ?? 0) + 1;
    };
    capture.on("frame", onFrame);
    let ended: string | undefined;
    capture.on("ended", (e) => (ended = `${e.reason}: ${e.message}`));
    const before = stream.stats();
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, opts.seconds * 1000));
    if (ended) throw new WlError("capture-failed", `capture ended during the test: ${ended}`);
    const seconds = (performance.now() - t0) / 1000;
    const after = stream.stats();
    const frames = after.counters.framesReceived - before.counters.framesReceived;
    const fmt = after.format;
    const result: CaptureTestResult = {
      fps: round(frames / seconds, 1),
      width: fmt?.width ?? 0,
      height: fmt?.height ?? 0,
      frames,
      bufferType: fmt?.bufferType ?? null,
      format: fmt?.format ?? "",
      stride: fmt?.stride ?? 0,
      seconds: round(seconds, 2),
      delivered: after.counters.framesDelivered - before.counters.framesDelivered,
      dropped: after.counters.framesDropped - before.counters.framesDropped,
      unchanged: after.counters.framesUnchanged - before.counters.framesUnchanged,
      damageRatioMean: events > 0 ? round(ratioSum / events, 4) : 0,
      damageSources: sources,
      latencyUsAvg: round(after.processToAvailable.avgUs, 1),
      latencyUsMax: after.processToAvailable.maxUs,
      restoreTokenUsed: capture.portal.restoreTokenUsed,
      desktop: desktop.kind,
      dmabuf: after.dmabuf,
    };
    if (opts.snapshot) {
      const frame = stream.copyFrame();
      if (!frame && stream.format?.dmabuf === true) throw new WlError("capture-failed", "the frames are DMA-BUFs (GPU memory, zero copy to VA-API): no CPU copy for a snapshot");
      if (!frame) throw new WlError("capture-failed", "no frame arrived, so there is no snapshot: the screen did not change (compositors send frames only on change); move the pointer, or use --animate on a headless desktop");
      writeFileSync(opts.snapshot, encodePng(frame.data, frame.width, frame.height, frame.stride, frame.format));
    }
    const out = process.stdout;
    out.write(`desktop     ${result.desktop}${capture.portal.restoreTokenUsed ? " (restore token reused: no dialog)" : ""}\n`);
    out.write(`size        ${result.width}x${result.height}\n`);
    out.write(`format      ${result.format}, ${result.bufferType ?? "no buffer yet"}, stride ${result.stride}; DMA-BUF ${result.dmabuf.offered ? "offered" : `not offered (${result.dmabuf.reason})`}\n`);
    out.write(`frames      ${frames} in ${result.seconds} s = ${result.fps} fps (to the next stage ${result.delivered}, replaced in the mailbox ${result.dropped}, unchanged ${result.unchanged})\n`);
    out.write(`damage      mean ${(result.damageRatioMean * 100).toFixed(1)} % of the screen per frame; sources ${JSON.stringify(sources)}\n`);
    out.write(`latency     PipeWire process -> frame available: avg ${(result.latencyUsAvg / 1000).toFixed(2)} ms, max ${(result.latencyUsMax / 1000).toFixed(2)} ms\n`);
    if (frames === 0) out.write("note        no frames: a static screen sends none; move the pointer or run something that draws\n");
    if (opts.snapshot) out.write(`snapshot    ${opts.snapshot}\n`);
    if (opts.json) out.write(`${JSON.stringify(result)}\n`);
    return result;
  } finally {
    await capture?.close();
    await desktop.close();
  }
}

function round(v: number, digits: number): number {
  const m = 10 ** digits;
  return Math.round(v * m) / m;
}
