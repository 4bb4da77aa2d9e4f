import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ChildProcess } from "node:child_process";
import { HeadlessDesktop } from "../../agent/desktop/index.js";
import { DesktopCapture, type CaptureEnded } from "../../agent/capture/desktop-capture.js";
import type { FrameInfo } from "../../agent/capture/capture-stream.js";
import { parseConfig } from "../../agent/config/load.js";
import { silentLogger } from "../../agent/log/logger.js";

/**
 * The capture stage on the real headless desktop: sway + xdg-desktop-portal-wlr + PipeWire, through
 * the portal, as the agent runs it.
 */
const capture = parseConfig({}, "(test)").capture;
const log = silentLogger();
let desktop: HeadlessDesktop;
let stateDir: string;

before(async () => {
  stateDir = mkdtempSync(join(tmpdir(), "wl-capture-state-"));
  desktop = await HeadlessDesktop.start({ width: 1280, height: 720, refreshHz: 60, log });
});
after(async () => {
  await desktop?.close();
  rmSync(stateDir, { recursive: true, force: true });
});

async function open(): Promise<DesktopCapture> {
  try {
    return await DesktopCapture.open({ capture, stateDir, busAddress: desktop.env.DBUS_SESSION_BUS_ADDRESS, log });
  } catch (err) {
    // The portal backend's own account of what happened, for a failure that is not ours to explain.
    const tail = (part: string) => {
      try {
        return readFileSync(join(desktop.rootDir, "log", `${part}.log`), "utf8").split("\n").slice(-25).join("\n");
      } catch {
        return "(no log)";
      }
    };
    throw new Error(`${(err as Error).message}\n--- xdpw ---\n${tail("xdpw")}\n--- portal ---\n${tail("portal")}`, { cause: err });
  }
}

/** A terminal whose text changes about 200 times a second: every refresh has something new. */
function animate(): Promise<ChildProcess> {
  return desktop.spawnClient("foot", ["sh", "-c", 'i=0; while :; do i=$((i+1)); echo "line $i"; sleep 0.005; done'], { name: "animate" });
}

async function stopClient(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const gone = new Promise((r) => c.once("exit", r));
  c.kill("SIGTERM");
  await gone;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function countFrames(cap: DesktopCapture, ms: number): Promise<{ fps: number; frames: FrameInfo[] }> {
  const before = cap.stream.stats().counters.framesReceived;
  const frames: FrameInfo[] = [];
  const on = (f: FrameInfo) => frames.push(f);
  cap.on("frame", on);
  const t0 = performance.now();
  await sleep(ms);
  cap.off("frame", on);
  const received = cap.stream.stats().counters.framesReceived - before;
  return { fps: received / ((performance.now() - t0) / 1000), frames };
}

test("an animated client at 60 Hz: frames of the configured size at >= 50 fps, then a static screen gives none", async () => {
  const cap = await open();
  const term = await animate();
  try {
    await sleep(700); // the terminal maps and starts drawing
    const { fps, frames } = await countFrames(cap, 3000);
    assert.ok(frames.length > 0);
    for (const f of frames) assert.deepEqual([f.width, f.height], [1280, 720]);
    assert.ok(fps >= 50, `fps ${fps.toFixed(1)} at 60 Hz`);
    await stopClient(term);
    await sleep(600); // the window closes: a last frame or two
    const still = await countFrames(cap, 1500);
    const changed = still.frames.filter((f) => f.damage.length > 0 && f.damageRatio > 0);
    assert.equal(changed.length, 0, `a static screen produced ${changed.length} frames with damage`);
    assert.equal(cap.stream.format?.bufferType, "memfd");
    // xdpw offers 2 buffers; we ask for as many as fit in 64 MB (8 at this size) and get them: with 2 a
    // late consumer left xdpw out of buffers, and a change made then waited for the next one.
    assert.equal(cap.stream.format?.buffers, 8, "the buffer count we asked xdpw for");
  } finally {
    await stopClient(term);
    await cap.close();
  }
});

test("at 30 Hz an animated client gives >= 25 fps", async () => {
  await desktop.setMode(1280, 720, 30);
  const cap = await open();
  const term = await animate();
  try {
    await sleep(700);
    const { fps } = await countFrames(cap, 3000);
    assert.ok(fps >= 25, `fps ${fps.toFixed(1)} at 30 Hz`);
    assert.ok(fps <= 32, `fps ${fps.toFixed(1)} cannot exceed the refresh rate`);
  } finally {
    await stopClient(term);
    await cap.close();
    await desktop.setMode(1280, 720, 60);
  }
});

test("a change in a known rectangle gives damage that covers it", async () => {
  const cap = await open();
  // A terminal that draws one character at a time at a fixed cell, slowly.
  const term = await desktop.spawnClient("foot", ["sh", "-c", 'clear; i=0; while :; do i=$(( (i+1) % 10 )); printf "\\033[12;40H%s" $i; sleep 0.25; done'], { name: "cell" });
  try {
    await sleep(1200);
    let checked = 0;
    for (let attempt = 0; attempt < 20 && checked < 3; attempt++) {
      const a = cap.stream.copyFrame();
      const next = await new Promise<FrameInfo>((resolve) => cap.once("frame", resolve));
      await sleep(20);
      const b = cap.stream.copyFrame();
      if (!a || !b || b.seq !== next.seq || b.seq !== a.seq + 1 || a.width !== b.width) continue;
      // The pixels that really changed, computed here from the two frames.
      let minX = Infinity, minY = Infinity, maxX = -1, maxY = -1;
      for (let y = 0; y < b.height; y++) {
        const row = y * b.stride;
        for (let x = 0; x < b.width; x++) {
          const i = row + x * 4;
          if (a.data[i] !== b.data[i] || a.data[i + 1] !== b.data[i + 1] || a.data[i + 2] !== b.data[i + 2]) {
            if (x < minX) minX = x;
            if (x > maxX) maxX = x;
            if (y < minY) minY = y;
            if (y > maxY) maxY = y;
          }
        }
      }
      if (maxX < 0) continue; // a frame with no visible change (cursor blink off->off)
      const covered = (x: number, y: number) => next.damage.some((r) => x >= r.x && x < r.x + r.width && y >= r.y && y < r.y + r.height);
      assert.ok(covered(minX, minY) && covered(maxX, maxY) && covered(minX, maxY) && covered(maxX, minY),
        `changed box ${minX},${minY}-${maxX},${maxY} not covered by ${JSON.stringify(next.damage)}`);
      assert.ok(next.damageRatio < 0.2, `a one-cell change damaged ${(next.damageRatio * 100).toFixed(1)} % of the screen`);
      checked++;
    }
    assert.ok(checked >= 3, `only ${checked} changes could be checked`);
  } finally {
    await stopClient(term);
    await cap.close();
  }
});

test("a mode change mid-stream renegotiates and the new size arrives", async () => {
  const cap = await open();
  const term = await animate();
  try {
    await sleep(500);
    const formats: { width: number; height: number }[] = [];
    cap.on("format", (f) => formats.push({ width: f.width, height: f.height }));
    await desktop.setMode(1024, 576, 60);
    const deadline = Date.now() + 5000;
    let sized: FrameInfo | undefined;
    while (Date.now() < deadline && !sized) {
      const f = await new Promise<FrameInfo>((resolve) => cap.once("frame", resolve));
      if (f.width === 1024 && f.height === 576) sized = f;
    }
    assert.ok(sized, `no 1024x576 frame; formats seen ${JSON.stringify(formats)}`);
    assert.ok(formats.some((f) => f.width === 1024 && f.height === 576));
    assert.ok((cap.stream.stats().counters.renegotiations ?? 0) >= 1);
  } finally {
    await stopClient(term);
    await cap.close();
    await desktop.setMode(1280, 720, 60);
  }
});

test("the second session reuses the restore token", async () => {
  const a = await open();
  await a.close();
  const b = await open();
  try {
    assert.equal(b.portal.restoreTokenUsed, true);
  } finally {
    await b.close();
  }
});

function fdCount(): number {
  return readdirSync("/proc/self/fd").length;
}
function threadCount(): number {
  return readdirSync("/proc/self/task").length;
}
function rssKb(): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
  return Number(m?.[1] ?? 0);
}

test("50 open/close cycles: no growth in fds, threads or memory", async () => {
  const term = await animate();
  try {
    await sleep(500);
    const cycle = async () => {
      const cap = await open();
      await new Promise<FrameInfo>((resolve) => cap.once("frame", resolve));
      await cap.close();
    };
    for (let i = 0; i < 5; i++) await cycle(); // warm up: allocator arenas, dbus-next, the addon
    await sleep(200);
    const fds0 = fdCount(), threads0 = threadCount(), rss0 = rssKb();
    for (let i = 0; i < 50; i++) await cycle();
    await sleep(500);
    const fds1 = fdCount(), threads1 = threadCount(), rss1 = rssKb();
    assert.equal(fds1, fds0, `fds ${fds0} -> ${fds1}`);
    assert.equal(threads1, threads0, `threads ${threads0} -> ${threads1}`);
    // Each cycle copies ~3.7 MB frames; 50 leaked cycles would be hundreds of MB. Allow allocator noise.
    assert.ok(rss1 - rss0 < 32 * 1024, `RSS ${rss0} kB -> ${rss1} kB`);
  } finally {
    await stopClient(term);
  }
});

test("PipeWire killed mid-stream: a typed event, the capture closes, the process goes on", async () => {
  const cap = await open();
  const ended = new Promise<CaptureEnded>((resolve) => cap.once("ended", resolve));
  const closed = new Promise<void>((resolve) => cap.once("close", () => resolve()));
  const pid = desktop.pids.get("pipewire");
  assert.ok(pid, `pipewire pid: ${JSON.stringify([...desktop.pids])}`);
  process.kill(pid, "SIGKILL");
  const e = await ended;
  assert.ok(["pipewire", "backend-exited", "revoked"].includes(e.reason), `reason ${e.reason}: ${e.message}`);
  await closed;
  assert.ok(cap.closed);
  assert.equal(cap.stream.closed, true);
});
