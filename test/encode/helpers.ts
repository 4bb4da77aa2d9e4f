// Test helpers for the encode stage (not a test file): the real capture path on the agent's real
// headless desktop (sway + PipeWire + xdg-desktop-portal-wlr), and decoding Annex-B back with
// libavcodec (the ffmpeg CLI) to measure PSNR against the captured source frame.
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";

import { CaptureStream } from "../../agent/capture/capture-stream.js";
import { HeadlessDesktop } from "../../agent/desktop/index.js";
import { silentLogger } from "../../agent/log/logger.js";
import { PortalSession } from "../../agent/portal/index.js";
import type { EncodeConfig } from "../../agent/config/schema.js";
import type { VideoEncoder } from "../../agent/encode/encoder.js";
import type { EncodedFrame } from "../../agent/encode/types.js";

const execFileP = promisify(execFile);

/** The [encode] defaults of config/wl-webrtc.toml, with overrides. */
export function encodeConfig(over: Partial<EncodeConfig> = {}): EncodeConfig {
  return {
    backends: ["vaapi", "nvenc", "x264", "openh264"],
    bitrate_kbps: 6000,
    max_fps: 60,
    profile: "constrained_baseline",
    preset: "ultrafast",
    refresh_interval_ms: 1000,
    refresh_max_interval_ms: 8000,
    intra_refresh: false,
    damage_roi: false,
    keyframe_min_interval_ms: 500,
    ...over,
  };
}

export interface DesktopCapture {
  desktop: HeadlessDesktop;
  session: PortalSession;
  capture: CaptureStream;
  dir: string;
  close(): Promise<void>;
}

/** HeadlessDesktop -> portal ScreenCast session -> CaptureStream on the portal's PipeWire fd. */
export async function startDesktopCapture(width: number, height: number, refreshHz: number): Promise<DesktopCapture> {
  const log = silentLogger();
  const desktop = await HeadlessDesktop.start({ width, height, refreshHz });
  let session: PortalSession | undefined;
  let capture: CaptureStream | undefined;
  const dir = mkdtempSync("/tmp/wl-encode-test-");
  try {
    const bus = desktop.env.DBUS_SESSION_BUS_ADDRESS;
    session = await PortalSession.open({
      ...(bus !== undefined ? { busAddress: bus } : {}),
      sourceTypes: ["monitor"],
      cursorMode: "hidden",
      persist: false,
      stateDir: join(dir, "state"),
      log,
      timeoutMs: 10_000,
    });
    const stream = session.streams[0];
    if (!stream) throw new Error("the portal session has no stream");
    capture = await CaptureStream.open({ fd: session.pipewireFd, nodeId: stream.nodeId, log });
  } catch (err) {
    capture?.close();
    await session?.close();
    await desktop.close();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const s = session;
  const c = capture;
  return {
    desktop,
    session: s,
    capture: c,
    dir,
    async close() {
      // Trap 4 of the notes: the PipeWire stream goes first, then the portal session.
      c.close();
      await s.close();
      await desktop.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Collects the encoder's frames until `stop()`. */
export function collect(enc: VideoEncoder): { frames: EncodedFrame[]; stop(): EncodedFrame[] } {
  const frames: EncodedFrame[] = [];
  const on = (f: EncodedFrame): void => {
    frames.push(f);
  };
  enc.on("frame", on);
  return {
    frames,
    stop() {
      enc.off("frame", on);
      return frames;
    },
  };
}

export function nextFrame(enc: VideoEncoder, timeoutMs: number, pred: (f: EncodedFrame) => boolean = () => true): Promise<EncodedFrame> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      enc.off("frame", on);
      reject(new Error(`no matching encoded frame within ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (f: EncodedFrame): void => {
      if (!pred(f)) return;
      clearTimeout(t);
      enc.off("frame", on);
      resolve(f);
    };
    enc.on("frame", on);
  });
}

export interface DecodeResult {
  width: number;
  height: number;
  frames: number;
  /** The last decoded picture, yuv420p. */
  last: Buffer;
  profile: string;
}

/** Decodes an Annex-B stream with libavcodec (ffmpeg CLI) to yuv420p. */
export async function decode(annexB: Buffer, dir: string): Promise<DecodeResult> {
  const inPath = join(dir, "stream.h264");
  const outPath = join(dir, "decoded.yuv");
  writeFileSync(inPath, annexB);
  const probe = await execFileP("ffprobe", ["-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height,profile", "-of", "json", inPath]);
  const info = (JSON.parse(probe.stdout) as { streams: { width: number; height: number; profile: string }[] }).streams[0];
  if (!info) throw new Error(`ffprobe found no video stream: ${probe.stdout}`);
  await execFileP("ffmpeg", ["-v", "error", "-y", "-f", "h264", "-i", inPath, "-f", "rawvideo", "-pix_fmt", "yuv420p", outPath], { maxBuffer: 1 << 24 });
  const raw = readFileSync(outPath);
  const size = (info.width * info.height * 3) / 2;
  const frames = Math.floor(raw.length / size);
  return { width: info.width, height: info.height, frames, last: raw.subarray((frames - 1) * size, frames * size), profile: info.profile };
}

/** The BGRx source frame in yuv420p (BT.709, limited range: what the encoder's VUI announces), by ffmpeg's swscale. */
export async function toYuv420(bgrx: Buffer, width: number, height: number, dir: string): Promise<Buffer> {
  const inPath = join(dir, "ref.bgr0");
  const outPath = join(dir, "ref.yuv");
  writeFileSync(inPath, bgrx);
  await execFileP("ffmpeg", [
    "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr0", "-s", `${width}x${height}`, "-i", inPath,
    "-vf", "scale=out_color_matrix=bt709:out_range=tv:flags=fast_bilinear", "-pix_fmt", "yuv420p", "-f", "rawvideo", outPath,
  ]);
  return readFileSync(outPath);
}

function planePsnr(a: Buffer, b: Buffer, offset: number, length: number): number {
  let se = 0;
  for (let i = offset; i < offset + length; i++) {
    const d = a[i]! - b[i]!;
    se += d * d;
  }
  const mse = se / length;
  return mse === 0 ? 100 : 10 * Math.log10((255 * 255) / mse);
}

/** PSNR of two yuv420p pictures: per plane and the 4:1:1-weighted average ffmpeg's psnr filter prints. */
export function psnrYuv420(a: Buffer, b: Buffer, width: number, height: number): { y: number; u: number; v: number; avg: number } {
  const ys = width * height;
  const cs = ys / 4;
  const y = planePsnr(a, b, 0, ys);
  const u = planePsnr(a, b, ys, cs);
  const v = planePsnr(a, b, ys + cs, cs);
  // Average over all samples, as ffmpeg does: from the summed MSE, not the mean of the dB values.
  const mse = (k: number, n: number): number => (255 * 255) / 10 ** (k / 10) * n;
  const avgMse = (mse(y, ys) + mse(u, cs) + mse(v, cs)) / (ys + 2 * cs);
  return { y, u, v, avg: 10 * Math.log10((255 * 255) / avgMse) };
}
