/**
 * Encode bench: recorded desktop content through our native path and through the ffmpeg CLI with
 * identical libx264 settings, side by side; then the agent's CPU with a static screen.
 *
 *   source scripts/env.sh && npx tsc -p tsconfig.json && node dist/bench/encode.js [--sizes 1280x720,1920x1080,3840x2160] [--frames N]
 *   node dist/bench/encode.js --only static --sizes 3840x2160     # only part 3 (static-screen CPU), ~20 s per size
 *
 * (`--runs N`, default 3: each side runs N times, alternating, and the median counts.)
 * 1. Records real frames from the agent's own headless desktop (sway + portal + PipeWire capture) for
 *    three kinds of content: a static terminal, scrolling text (a terminal listing files), and a video
 *    playing in a window (ffplay showing testsrc2), at each size, into raw BGRx files in a temp dir.
 * 2. Feeds the identical frames (1) to our path: FrameFeeder -> NativeVideoEncoder (swscale BGRx ->
 *    I420, libx264 through libavcodec, Annex-B out to JS) as fast as it takes them, and (2) to
 *    `ffmpeg -f rawvideo ... -c:v libx264` with the same preset, tune, profile, VBV, threads and colour
 *    conversion. Prints ms/frame, fps and the ratio ours/ffmpeg (target <= 1.05).
 * 3. At each size, measures this process's CPU (capture + encoder threads + JS) on a static screen
 *    over `--static-s` seconds (default 10; the encoder has been open 2 s before) with the default
 *    refresh settings (target < 1 % of a core), and where it goes: per thread (/proc/self/task/<tid>/stat,
 *    grouped by thread name: wl-encode = the pipeline thread and the x264/swscale threads it starts,
 *    wl-capture = the PipeWire loop, node = JS), the encoder's own convert/encode time, and what
 *    capture received. `--only static` runs this part alone.
 * The last line is one JSON object with every figure.
 */
import { execFile, type ChildProcess } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";

import type { CaptureStream } from "../agent/capture/capture-stream.js";
import type { EncodeConfig } from "../agent/config/schema.js";
import { VideoEncoder } from "../agent/encode/encoder.js";
import { silentLogger } from "../agent/log/logger.js";
import { loadAddon } from "../agent/native/addon.js";
import { startDesktopCapture, type DesktopCapture } from "../test/encode/helpers.js";

const execFileP = promisify(execFile);
const log = silentLogger();

type Content = "static" | "scrolling" | "video";
const CONTENTS: Content[] = ["static", "scrolling", "video"];

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const SIZES = (arg("sizes") ?? "1280x720,1920x1080,3840x2160").split(",").map((s) => s.split("x").map(Number) as [number, number]);
const FRAMES_OVERRIDE = arg("frames") !== undefined ? Number(arg("frames")) : undefined;
const THREADS = 2;
const RUNS = Number(arg("runs") ?? 3);
const ONLY = arg("only");
if (ONLY !== undefined && ONLY !== "static") throw new Error(`--only: "static" is the one part that runs alone (got ${ONLY})`);
const STATIC_S = Number(arg("static-s") ?? 10);
/** [encode] refresh_max_interval_ms for part 3 (default: the config default; 1000 measures the old constant 1 s refresh). */
const MAX_REFRESH_MS = Number(arg("refresh-max-ms") ?? 8000);
const CLK_TCK = 100; // USER_HZ: the unit of /proc/<pid>/stat times on Linux

function median<T extends { msPerFrame: number }>(runs: T[]): T {
  const sorted = [...runs].sort((a, b) => a.msPerFrame - b.msPerFrame);
  return sorted[Math.floor(sorted.length / 2)]!;
}
const FPS = 60;

function framesFor(w: number): number {
  if (FRAMES_OVERRIDE !== undefined) return FRAMES_OVERRIDE;
  return w >= 3840 ? 40 : w >= 1920 ? 90 : 120;
}

function bitrateKbps(w: number, h: number): number {
  // 6 Mbit/s for 1080p desktop content (the default), scaled by area.
  return Math.round((6000 * (w * h)) / (1920 * 1080));
}

function config(w: number, h: number): EncodeConfig {
  return {
    backends: ["x264"],
    bitrate_kbps: bitrateKbps(w, h),
    max_fps: FPS,
    profile: "constrained_baseline",
    preset: "ultrafast",
    refresh_interval_ms: 0,
    refresh_max_interval_ms: 8000,
    intra_refresh: false,
    damage_roi: false,
    keyframe_min_interval_ms: 500,
  };
}

async function stop(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  process.kill(child.pid, "SIGTERM");
  await Promise.race([exited, sleep(3000)]);
}

/** Records `n` captured frames (each a full copy) into a raw BGRx file. For "static" the one frame is repeated. */
async function record(capture: CaptureStream, path: string, n: number, w: number, h: number, content: Content): Promise<number> {
  const fd = openSync(path, "w");
  let written = 0;
  try {
    if (content === "static") {
      await sleep(800);
      const f = capture.copyFrame();
      if (!f || f.width !== w || f.height !== h) throw new Error(`no ${w}x${h} frame to record`);
      for (let i = 0; i < n; i++) writeSync(fd, f.data);
      return n;
    }
    let lastSeq = -1;
    const deadline = Date.now() + 60_000;
    await new Promise<void>((resolve, reject) => {
      const on = (): void => {
        const f = capture.copyFrame();
        if (!f || f.seq === lastSeq || f.width !== w || f.height !== h) return;
        lastSeq = f.seq;
        writeSync(fd, f.data);
        if (++written >= n) {
          capture.off("frame", on);
          resolve();
        } else if (Date.now() > deadline) {
          capture.off("frame", on);
          reject(new Error(`recorded only ${written} of ${n} frames of ${content}`));
        }
      };
      capture.on("frame", on);
    });
    return written;
  } finally {
    closeSync(fd);
  }
}

interface RunResult {
  msPerFrame: number;
  fps: number;
  frames: number;
  kbit: number;
}

/** Our path: FrameFeeder (native, preloaded) -> NativeVideoEncoder, as fast as it takes frames. */
async function runOurs(path: string, w: number, h: number, n: number, over: Partial<EncodeConfig> = {}): Promise<RunResult & { convertUs: number; encodeUs: number }> {
  const addon = loadAddon();
  const feeder = new addon.FrameFeeder();
  try {
    const loaded = feeder.load(path, w, h, "BGRx", n);
    if (loaded !== n) throw new Error(`loaded ${loaded} of ${n} frames`);
    const enc = await VideoEncoder.open({ capture: { nativeFrameSource: feeder }, config: { ...config(w, h), ...over }, log, width: w, height: h, threads: THREADS, benchmark: true });
    try {
      let got = 0;
      let bytes = 0;
      let t1 = 0;
      const done = new Promise<void>((resolve) =>
        enc.on("frame", (f) => {
          bytes += f.data.length;
          if (++got === n) {
            t1 = performance.now();
            resolve();
          }
        }),
      );
      const t0 = performance.now();
      feeder.play(0, 1);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`ours: ${got} of ${n} frames`)), 300_000);
      });
      try {
        await Promise.race([done, timeout]);
      } finally {
        clearTimeout(timer);
      }
      const s = enc.stats();
      const ms = (t1 - t0) / n;
      return { msPerFrame: ms, fps: 1000 / ms, frames: n, kbit: (bytes * 8) / 1000, convertUs: s.convert.avgUs, encodeUs: s.encode.avgUs };
    } finally {
      enc.close();
    }
  } finally {
    feeder.close();
  }
}

/** The same frames through the ffmpeg CLI with identical libx264 settings; its own -benchmark rtime. */
async function runFfmpeg(path: string, w: number, h: number, n: number, out: string): Promise<RunResult> {
  const kbps = bitrateKbps(w, h);
  const args = [
    "-hide_banner", "-nostdin", "-benchmark", "-y",
    "-f", "rawvideo", "-pix_fmt", "bgr0", "-s", `${w}x${h}`, "-r", String(FPS), "-i", path,
    "-frames:v", String(n),
    // The same conversion as ours: swscale, fast bilinear, BGRx -> I420 BT.709 limited range.
    "-vf", "scale=out_color_matrix=bt709:out_range=tv:flags=fast_bilinear,format=yuv420p",
    "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-profile:v", "baseline", "-forced-idr", "1",
    "-threads", String(THREADS), "-thread_type", "slice",
    // Ours asks libx264 for 15 % more than the target (calibration, native/src/encode/x264_backend.cc);
    // the VBV buffer stays one frame of the target.
    "-b:v", `${Math.round(kbps * 1.15)}k`, "-maxrate", `${Math.round(kbps * 1.15)}k`, "-bufsize", `${Math.max(8, Math.round(kbps / FPS))}k`,
    "-g", String(2 ** 30 - 1), "-bf", "0", "-refs", "1", "-qmin", "20",
    "-x264-params", "scenecut=0:rc-lookahead=0:sync-lookahead=0:mbtree=0:bframes=0:ref=1:sliced-threads=1:keyint=infinite",
    "-color_primaries", "bt709", "-color_trc", "bt709", "-colorspace", "bt709",
    "-f", "h264", out,
  ];
  const t0 = performance.now();
  const { stderr } = await execFileP("ffmpeg", args, { maxBuffer: 1 << 24 });
  const wall = performance.now() - t0;
  const m = /bench: utime=[\d.]+s stime=[\d.]+s rtime=([\d.]+)s/.exec(stderr);
  const rtimeMs = m ? Number(m[1]) * 1000 : wall;
  const ms = rtimeMs / n;
  return { msPerFrame: ms, fps: 1000 / ms, frames: n, kbit: (statSync(out).size * 8) / 1000 };
}

async function startContent(dc: DesktopCapture, content: Content): Promise<ChildProcess | undefined> {
  switch (content) {
    case "static":
      return dc.desktop.spawnClient("foot", ["-e", "sh", "-c", "ls -la /usr/lib/x86_64-linux-gnu | head -200; exec sleep 1000"]);
    case "scrolling":
      return dc.desktop.spawnClient("foot", ["-e", "sh", "-c", "while :; do ls -lR /usr/share; done"]);
    case "video":
      // A video playing in a window: ffplay (SDL2 on Wayland, software renderer: no GPU here).
      return dc.desktop.spawnClient("ffplay", ["-loglevel", "error", "-an", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"], {
        env: { SDL_VIDEODRIVER: "wayland", SDL_RENDER_DRIVER: "software" },
      });
  }
}

/** CPU ticks per thread of this process: tid -> {name, ticks}. */
function threadTicks(): Map<string, { name: string; ticks: number }> {
  const out = new Map<string, { name: string; ticks: number }>();
  for (const tid of readdirSync("/proc/self/task")) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/self/task/${tid}/stat`, "utf8");
    } catch {
      continue; // exited meanwhile
    }
    const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    out.set(tid, { name, ticks: Number(f[11]) + Number(f[12]) }); // utime, stime (fields 14, 15)
  }
  return out;
}

/**
 * Groups thread ticks: the JS main thread ("js"), the threads that appeared when the encoder opened
 * ("encoder": the pipeline thread wl-encode plus the x264/swscale workers, which libavcodec starts on
 * whichever thread opens it, so they carry no useful name), the capture's PipeWire loop (wl-capture),
 * and the rest by name (Node's platform workers, PipeWire's data loop).
 */
function groupTicks(ticks: Map<string, { name: string; ticks: number }>, before: Set<string>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [tid, t] of ticks) {
    const group = tid === String(process.pid) ? "js" : !before.has(tid) ? "encoder" : t.name;
    out.set(group, (out.get(group) ?? 0) + t.ticks);
  }
  return out;
}

interface StaticCpu {
  cpuPercent: number;
  frames: number;
  refreshes: number;
  /** % of a core per thread name over the window. */
  threads: Record<string, number>;
  /** % of a core spent in the encoder's conversion and in backend Encode() (encoder thread + its workers' wall time). */
  convertPercent: number;
  encodePercent: number;
  refreshBytes: number;
  /** Each refresh in the window: seconds since the window opened / bytes (converged ones are tiny). */
  refreshTrace: string[];
  captureReceived: number;
  captureUnchanged: number;
  captureDelivered: number;
  loadavg: string;
}

async function staticCpu(dc: DesktopCapture, w: number, h: number): Promise<StaticCpu> {
  const foot = await startContent(dc, "static");
  const tidsBefore = new Set(threadTicks().keys());
  const enc = await VideoEncoder.open({ capture: dc.capture, config: { ...config(w, h), refresh_interval_ms: 1000, refresh_max_interval_ms: MAX_REFRESH_MS }, log });
  try {
    await sleep(2000);
    let frames = 0;
    let refreshes = 0;
    let refreshBytes = 0;
    const refreshTrace: string[] = [];
    let tWindow = performance.now();
    enc.on("frame", (f) => {
      frames++;
      if (f.refresh === true) {
        refreshes++;
        refreshBytes += f.data.length;
        refreshTrace.push(`${((performance.now() - tWindow) / 1000).toFixed(1)}s/${f.data.length}`);
      }
    });
    const s0 = enc.stats();
    const k0 = dc.capture.stats().counters;
    const th0 = groupTicks(threadTicks(), tidsBefore);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    tWindow = t0;
    await sleep(STATIC_S * 1000);
    const c = process.cpuUsage(c0);
    const th1 = groupTicks(threadTicks(), tidsBefore);
    const wall = performance.now() - t0;
    const s1 = enc.stats();
    const k1 = dc.capture.stats().counters;
    const threads: Record<string, number> = {};
    for (const [name, t] of th1) {
      const d = t - (th0.get(name) ?? 0);
      if (d > 0) threads[name] = Math.round(((d / CLK_TCK) * 1000 * 100 * 100) / wall) / 100;
    }
    return {
      cpuPercent: ((c.user + c.system) / 1000 / wall) * 100,
      frames,
      refreshes,
      threads,
      convertPercent: ((s1.convert.sumUs - s0.convert.sumUs) / 1000 / wall) * 100,
      encodePercent: ((s1.encode.sumUs - s0.encode.sumUs) / 1000 / wall) * 100,
      refreshBytes,
      refreshTrace,
      captureReceived: k1.framesReceived - k0.framesReceived,
      captureUnchanged: k1.framesUnchanged - k0.framesUnchanged,
      captureDelivered: k1.framesDelivered - k0.framesDelivered,
      loadavg: readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" "),
    };
  } finally {
    enc.close();
    await stop(foot);
  }
}

function printStatic(w: number, h: number, c: StaticCpu): void {
  console.log(
    `${`${w}x${h}`.padEnd(10)} static screen, ${STATIC_S} s, encoder open (refresh 1 s, backoff to ${MAX_REFRESH_MS} ms): agent CPU ${c.cpuPercent.toFixed(2)} % of a core; ` +
      `${c.frames} frames (${c.refreshes} refresh, ${c.refreshBytes} bytes); load average ${c.loadavg}`,
  );
  const threads = Object.entries(c.threads).sort((a, b) => b[1] - a[1]).map(([n, p]) => `${n} ${p.toFixed(2)}`).join(", ");
  console.log(
    `${"".padEnd(10)} breakdown (% of a core): threads: ${threads}; encoder wall time: convert ${c.convertPercent.toFixed(2)}, encode ${c.encodePercent.toFixed(2)}; ` +
      `capture: ${c.captureReceived} buffers received, ${c.captureUnchanged} unchanged, ${c.captureDelivered} delivered`,
  );
  console.log(`${"".padEnd(10)} refreshes (time/bytes): ${c.refreshTrace.join(" ")}`);
}

async function main(): Promise<void> {
  const dir = mkdtempSync("/tmp/wl-encode-bench-");
  const results: Record<string, unknown>[] = [];
  const cpu: ({ size: string } & StaticCpu)[] = [];
  let roi: { size: string; content: string; off: number; on: number; costRatio: number } | undefined;
  const [w0, h0] = SIZES[0]!;
  const dc = await startDesktopCapture(w0, h0, 60);
  try {
    console.log(`encode bench: libx264 ultrafast zerolatency baseline, ${THREADS} threads, CBR (VBV one frame at ${FPS} fps); recorded desktop frames in ${dir}`);
    console.log(`${"size".padEnd(10)} ${"content".padEnd(10)} ${"ours ms/f".padStart(10)} ${"ours fps".padStart(9)} ${"ffmpeg ms/f".padStart(12)} ${"ffmpeg fps".padStart(11)} ${"ratio".padStart(6)}  ours kbit / ffmpeg kbit`);
    for (const [w, h] of SIZES) {
      if (dc.capture.format?.width !== w || dc.capture.format?.height !== h) {
        await dc.desktop.setMode(w, h, 60);
        const deadline = Date.now() + 10_000;
        while ((dc.capture.format?.width !== w || dc.capture.format?.height !== h) && Date.now() < deadline) await sleep(50);
      }
      for (const content of ONLY === "static" ? [] : CONTENTS) {
        const n = framesFor(w);
        const raw = join(dir, `${w}x${h}-${content}.bgr0`);
        const client = await startContent(dc, content);
        let recorded: number;
        try {
          await sleep(content === "video" ? 1500 : 700);
          recorded = await record(dc.capture, raw, n, w, h, content);
        } finally {
          await stop(client);
        }
        // Alternating runs, the median of each: a 2-core machine is noisy.
        const oursRuns: Awaited<ReturnType<typeof runOurs>>[] = [];
        const ffRuns: RunResult[] = [];
        for (let k = 0; k < RUNS; k++) {
          oursRuns.push(await runOurs(raw, w, h, recorded));
          ffRuns.push(await runFfmpeg(raw, w, h, recorded, join(dir, "ffmpeg.h264")));
        }
        const ours = median(oursRuns);
        const ff = median(ffRuns);
        const ratio = ours.msPerFrame / ff.msPerFrame;
        console.log(
          `${`${w}x${h}`.padEnd(10)} ${content.padEnd(10)} ${ours.msPerFrame.toFixed(2).padStart(10)} ${ours.fps.toFixed(1).padStart(9)} ` +
            `${ff.msPerFrame.toFixed(2).padStart(12)} ${ff.fps.toFixed(1).padStart(11)} ${ratio.toFixed(3).padStart(6)}  ` +
            `${ours.kbit.toFixed(0)} / ${ff.kbit.toFixed(0)} (ours: convert ${(ours.convertUs / 1000).toFixed(2)} ms, encode ${(ours.encodeUs / 1000).toFixed(2)} ms)`,
        );
        results.push({ size: `${w}x${h}`, content, frames: recorded, ours, ffmpeg: ff, ratio });
        if (w === 1920 && content === "scrolling") {
          // The cost of damage_roi: adaptive quantisation (which ultrafast turns off) plus the ROI
          // offsets. Same frames, every frame fully damaged.
          const runs: Awaited<ReturnType<typeof runOurs>>[] = [];
          for (let k = 0; k < RUNS; k++) runs.push(await runOurs(raw, w, h, recorded, { damage_roi: true }));
          const r = median(runs);
          roi = { size: `${w}x${h}`, content, off: ours.msPerFrame, on: r.msPerFrame, costRatio: r.msPerFrame / ours.msPerFrame };
          console.log(`${`${w}x${h}`.padEnd(10)} ${content.padEnd(10)} damage_roi on: ${r.msPerFrame.toFixed(2)} ms/frame vs ${ours.msPerFrame.toFixed(2)} off (x${roi.costRatio.toFixed(2)})`);
        }
        rmSync(raw, { force: true });
      }
      const c = await staticCpu(dc, w, h);
      cpu.push({ size: `${w}x${h}`, ...c });
      printStatic(w, h, c);
    }
  } finally {
    await dc.close();
    rmSync(dir, { recursive: true, force: true });
  }
  const worst = results.length > 0 ? Math.max(...results.map((r) => r.ratio as number)) : null;
  console.log(JSON.stringify({ bench: "encode", threads: THREADS, results, worstRatio: worst, ratioTarget: 1.05, damageRoi: roi, staticCpu: cpu, cpuTargetPercent: 1 }));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
