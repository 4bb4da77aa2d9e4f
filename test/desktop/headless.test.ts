// Integration tests for agent/desktop: real dbus-daemon, PipeWire, WirePlumber, sway (headless, pixman),
// xdg-desktop-portal-wlr and xdg-desktop-portal, run as whatever user runs the tests (root in CI).
import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import dbus from "dbus-next";
import type { MessageBus, Variant } from "dbus-next";
import { detectSession } from "../../agent/desktop/detect.js";
import { DesktopStartError, HeadlessDesktop } from "../../agent/desktop/headless.js";
import { isAlive, processesWithEnv } from "../../agent/desktop/procs.js";
import { guardUsocketClose } from "../../agent/util/usocket-guard.js";
import { InvalidStateError } from "../../agent/util/errors.js";

const here = dirname(fileURLToPath(import.meta.url));
// dist/test/desktop -> repository root
const repo = resolve(here, "..", "..", "..");
const baseDir = mkdtempSync(join(tmpdir(), "wl-desktop-test-"));
const runDirsSeen = new Set<string>();
const extraPids = new Set<number>();

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function until<T>(what: string, timeoutMs: number, probe: () => T | undefined | false | Promise<T | undefined | false>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv, timeoutMs = 20000): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((res) => {
    execFile(cmd, args, { env, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
      res({ stdout: String(stdout), stderr: String(stderr), code });
    });
  });
}

/** Pids whose environment has an entry starting with `prefix` (e.g. any runtime dir under baseDir). */
function processesUnder(prefix: string): number[] {
  const { readdirSync } = fs;
  const out: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const env = fs.readFileSync(`/proc/${e}/environ`, "latin1");
      if (env.split("\0").some((v) => v.startsWith(prefix))) out.push(Number(e));
    } catch {
      // gone, or not ours to read
    }
  }
  return out;
}

// --- a minimal ScreenCast client over dbus-next (the real one is agent/portal/) ---------------------

const PORTAL = "org.freedesktop.portal.Desktop";
const PORTAL_PATH = "/org/freedesktop/portal/desktop";

async function busCall(bus: MessageBus, m: { destination: string; path: string; interface: string; member: string; signature?: string; body?: unknown[] }): Promise<unknown[]> {
  const reply = await bus.call(new dbus.Message(m));
  return reply?.body ?? [];
}

async function connectBus(address: string): Promise<MessageBus> {
  guardUsocketClose();
  const bus = dbus.sessionBus({ busAddress: address });
  bus.on("error", () => {});
  await busCall(bus, { destination: "org.freedesktop.DBus", path: "/org/freedesktop/DBus", interface: "org.freedesktop.DBus.Peer", member: "Ping" });
  return bus;
}

let tokenSeq = 0;
/** Calls a ScreenCast method that answers through a Request object; resolves with its Response. */
async function portalRequest(bus: MessageBus, member: string, signature: string, args: unknown[], options: Record<string, Variant>): Promise<{ code: number; results: Record<string, Variant> }> {
  const token = `wltest${process.pid}_${++tokenSeq}`;
  // dbus-next sets `name` (our unique name) after Hello; its typings do not declare it.
  const sender = (bus as unknown as { name: string }).name.slice(1).replace(/\./g, "_");
  const path = `/org/freedesktop/portal/desktop/request/${sender}/${token}`;
  // Subscribe before calling: the Response can come before the call returns.
  await busCall(bus, {
    destination: "org.freedesktop.DBus",
    path: "/org/freedesktop/DBus",
    interface: "org.freedesktop.DBus",
    member: "AddMatch",
    signature: "s",
    body: [`type='signal',interface='org.freedesktop.portal.Request',member='Response',path='${path}'`],
  });
  let onMsg: (m: dbus.Message) => void = () => {};
  const response = new Promise<{ code: number; results: Record<string, Variant> }>((res) => {
    onMsg = (m) => {
      if (m.path === path && m.member === "Response") res({ code: m.body[0] as number, results: m.body[1] as Record<string, Variant> });
    };
    bus.on("message", onMsg);
  });
  try {
    await busCall(bus, {
      destination: PORTAL,
      path: PORTAL_PATH,
      interface: "org.freedesktop.portal.ScreenCast",
      member,
      signature,
      body: [...args, { ...options, handle_token: new dbus.Variant("s", token) }],
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`${member}: no Response within 10 s`)), 10000)));
    try {
      return await Promise.race([response, timeout]);
    } finally {
      clearTimeout(timer);
    }
  } finally {
    bus.off("message", onMsg);
  }
}

interface CastResult {
  session: string;
  startCode: number;
  streams: Array<[number, Record<string, Variant>]>;
}

/** CreateSession -> SelectSources(monitor, cursor hidden) -> Start. */
async function startScreenCast(bus: MessageBus): Promise<CastResult> {
  const created = await portalRequest(bus, "CreateSession", "a{sv}", [], {
    session_handle_token: new dbus.Variant("s", `wltestsess${++tokenSeq}`),
  });
  assert.equal(created.code, 0, "CreateSession answered non-zero");
  const session = created.results.session_handle?.value as string;
  const selected = await portalRequest(bus, "SelectSources", "oa{sv}", [session], {
    types: new dbus.Variant("u", 1),
    multiple: new dbus.Variant("b", false),
    cursor_mode: new dbus.Variant("u", 1),
  });
  assert.equal(selected.code, 0, "SelectSources answered non-zero");
  const started = await portalRequest(bus, "Start", "osa{sv}", [session, ""], {});
  const streams = (started.results.streams?.value ?? []) as Array<[number, Record<string, Variant>]>;
  return { session, startCode: started.code, streams };
}

async function closeSession(bus: MessageBus, session: string): Promise<void> {
  await busCall(bus, { destination: PORTAL, path: session, interface: "org.freedesktop.portal.Session", member: "Close" });
}

// --- the frame counter (test/desktop/pw-frames.c), built once -------------------------------------

const pwFrames = join(baseDir, "pw-frames");
interface FramesOutput {
  formats: Array<{ width: number; height: number }>;
  summary: { frames: number; nonempty: number; width: number; height: number; firstFrameMs: number; error: string | null };
  stderr: string;
}

function countFrames(env: Record<string, string>, node: number, seconds: number): { proc: ChildProcess; done: Promise<FramesOutput> } {
  const proc = spawn(pwFrames, [String(node), String(seconds)], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  extraPids.add(proc.pid!);
  let out = "";
  let err = "";
  proc.stdout.on("data", (c: Buffer) => (out += c.toString()));
  proc.stderr.on("data", (c: Buffer) => (err += c.toString()));
  const done = new Promise<FramesOutput>((res, rej) => {
    proc.on("close", (code) => {
      const lines = out.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as { event: string } & Record<string, unknown>);
      const summary = lines.find((l) => l.event === "summary") as unknown as FramesOutput["summary"] | undefined;
      if (!summary) return rej(new Error(`pw-frames exited ${code} without a summary: ${err}`));
      res({ formats: lines.filter((l) => l.event === "format") as unknown as FramesOutput["formats"], summary, stderr: err });
    });
  });
  return { proc, done };
}

// --------------------------------------------------------------------------------------------------

describe("HeadlessDesktop", { timeout: 60000 }, () => {
  let d: HeadlessDesktop;
  let bus: MessageBus | undefined;
  let closeEvents = 0;
  const partExits: Array<{ part: string; code: number | null; signal: string | null }> = [];

  before(async () => {
    const cc = await run("sh", ["-c", `cc -O1 -o '${pwFrames}' '${join(repo, "test", "desktop", "pw-frames.c")}' $(pkg-config --cflags --libs libpipewire-0.3)`]);
    assert.equal(cc.code, 0, `building pw-frames failed (needs build-essential, libpipewire-0.3-dev):\n${cc.stderr}`);
    const t0 = performance.now();
    d = await HeadlessDesktop.start({ width: 1280, height: 720, refreshHz: 30, baseDir });
    console.log(`# desktop started in ${Math.round(performance.now() - t0)} ms`);
    runDirsSeen.add(d.env.XDG_RUNTIME_DIR!);
    d.on("close", () => closeEvents++);
    d.on("part-exited", (e) => partExits.push(e));
    bus = await connectBus(d.env.DBUS_SESSION_BUS_ADDRESS!);
  });

  after(async () => {
    bus?.disconnect();
    await d?.close();
  });

  test("starts every part and exposes ScreenCast on its private bus", async () => {
    for (const k of ["XDG_RUNTIME_DIR", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "SWAYSOCK", "XDG_CURRENT_DESKTOP", "XDG_SESSION_TYPE", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"]) {
      assert.ok(d.env[k], `env.${k} is set`);
    }
    assert.ok(d.env.XDG_RUNTIME_DIR!.startsWith(baseDir), "runtime dir is under baseDir");
    assert.equal(d.outputName, "HEADLESS-1");
    assert.deepEqual([...d.pids.keys()], ["dbus", "pipewire", "wireplumber", "sway", "xdpw", "portal"]);
    for (const [part, pid] of d.pids) assert.ok(isAlive(pid), `${part} (${pid}) is alive`);

    const [types] = await busCall(bus!, { destination: PORTAL, path: PORTAL_PATH, interface: "org.freedesktop.DBus.Properties", member: "Get", signature: "ss", body: ["org.freedesktop.portal.ScreenCast", "AvailableSourceTypes"] });
    assert.ok(((types as Variant).value as number) & 1, "monitor sources are available");

    // The xdpw preload is really loaded into the xdpw we started.
    const maps = readFileSync(`/proc/${d.pids.get("xdpw")}/maps`, "utf8");
    assert.match(maps, /libwl-xdpw-shm\.so/);

    const status = await detectSession(d.env);
    assert.equal(status.usable, true, status.reason);
    assert.equal(status.waylandDisplay, d.env.WAYLAND_DISPLAY);
    // Without WAYLAND_DISPLAY (systemd --user) the live socket is found in the runtime dir.
    const { WAYLAND_DISPLAY: _, ...noDisplay } = d.env;
    const found = await detectSession(noDisplay);
    assert.equal(found.usable, true, found.reason);
    assert.equal(found.waylandDisplay, d.env.WAYLAND_DISPLAY);
    const none = await detectSession({ XDG_RUNTIME_DIR: baseDir });
    assert.equal(none.usable, false);
    const noBus = await detectSession({ ...d.env, DBUS_SESSION_BUS_ADDRESS: `unix:path=${baseDir}/no-such-bus` });
    assert.equal(noBus.usable, false);
    assert.match(noBus.reason, /session bus/);
  });

  test("a portal ScreenCast session starts and frames flow through PipeWire, also across a mode change", async () => {
    // Something that changes the screen: a static screen sends no frames at all.
    const foot = await d.spawnClient("foot", ["-e", "sh", "-c", "while :; do date +%T.%N; sleep 0.02; done"]);
    assert.ok(foot.pid);
    await until("foot's window", 10000, async () => (await d.swaymsg("-t", "get_tree", "-r")).includes('"app_id": "foot"'));

    const t0 = performance.now();
    const cast = await startScreenCast(bus!);
    const handshakeMs = performance.now() - t0;
    assert.equal(cast.startCode, 0, "Start answered 0 (without the xdpw preload it answers 2 on this machine)");
    assert.equal(cast.streams.length, 1);
    const [node, props] = cast.streams[0]!;
    assert.deepEqual(props.size?.value, [1280, 720]);

    const counter = countFrames(d.env, node, 3);
    await sleep(1500);
    await d.setMode(1024, 576, 30);
    const out = await counter.done;
    console.log(`# portal handshake ${handshakeMs.toFixed(0)} ms; ${JSON.stringify(out.summary)}; formats ${JSON.stringify(out.formats.map((f) => `${f.width}x${f.height}`))}`);
    assert.equal(out.summary.error, null, out.stderr);
    assert.ok(out.summary.frames >= 20, `at least 20 frames in 3 s (got ${out.summary.frames})`);
    assert.ok(out.summary.nonempty >= 20, `frames carry data (got ${out.summary.nonempty})`);
    // param_changed may repeat a format while the stream renegotiates: compare the distinct sizes in order.
    const sizes = out.formats.map((f) => [f.width, f.height]).filter((s, i, all) => i === 0 || String(s) !== String(all[i - 1]));
    assert.deepEqual(
      sizes,
      [
        [1280, 720],
        [1024, 576],
      ],
      "the stream renegotiated to the new mode",
    );
    // Consumer gone first, then the session (xdpw 0.7 crashes the other way round).
    await closeSession(bus!, cast.session);
    foot.kill("SIGTERM");
  });

  test("setMode changes the output mode", async () => {
    await d.setMode(800, 600, 60);
    const outputs = JSON.parse(await d.swaymsg("-t", "get_outputs", "-r")) as Array<{ name: string; current_mode: { width: number; height: number; refresh: number } }>;
    assert.deepEqual(outputs.find((o) => o.name === "HEADLESS-1")?.current_mode, { width: 800, height: 600, refresh: 60000 });
    await assert.rejects(d.setMode(800.5, 600, 60), TypeError);
    await assert.rejects(d.setMode(800, 600, 0), TypeError);
  });

  test("a dying part emits part-exited; an xdpw without the preload cannot start a cast", async () => {
    const xdpwPid = d.pids.get("xdpw")!;
    process.kill(xdpwPid, "SIGKILL");
    await until("part-exited for xdpw", 5000, () => partExits.find((e) => e.part === "xdpw"));
    assert.deepEqual(partExits, [{ part: "xdpw", code: null, signal: "SIGKILL" }]);

    // The same xdpw binary without libwl-xdpw-shm.so: the failure the preload exists for.
    const raw = spawn("/usr/libexec/xdg-desktop-portal-wlr", ["-l", "INFO"], { env: { ...process.env, ...d.env }, stdio: ["ignore", "ignore", "pipe"] });
    extraPids.add(raw.pid!);
    let rawErr = "";
    raw.stderr.on("data", (c: Buffer) => (rawErr += c.toString()));
    try {
      await until("the plain xdpw on the bus", 5000, async () => {
        const [owned] = await busCall(bus!, { destination: "org.freedesktop.DBus", path: "/org/freedesktop/DBus", interface: "org.freedesktop.DBus", member: "NameHasOwner", signature: "s", body: ["org.freedesktop.impl.portal.desktop.wlr"] });
        return owned === true;
      });
      const cast = await startScreenCast(bus!);
      assert.equal(cast.startCode, 2, "Start fails without the preload");
      // Its stderr is a pipe of its own: the reason can reach us after the D-Bus reply (seen once in CI).
      await until("xdpw logs why", 5000, () => /unable to receive a valid format from wlr_screencopy/.test(rawErr) || undefined).catch(() => undefined);
      assert.match(rawErr, /unable to receive a valid format from wlr_screencopy/);
      await closeSession(bus!, cast.session).catch(() => {});
    } finally {
      raw.kill("SIGKILL");
    }
  });

  test("close() stops every part, leaves no process of the session and removes the runtime dir", async () => {
    const pids = [...d.pids.values()];
    const runDir = d.env.XDG_RUNTIME_DIR!;
    const client = await d.spawnClient("foot", []);
    bus!.disconnect();
    bus = undefined;
    const t0 = performance.now();
    await Promise.all([d.close(), d.close()]);
    console.log(`# close took ${Math.round(performance.now() - t0)} ms`);
    assert.equal(d.closed, true);
    for (const pid of [...pids, client.pid!]) assert.equal(isAlive(pid), false, `pid ${pid} is gone`);
    assert.deepEqual(processesWithEnv("XDG_RUNTIME_DIR", runDir), [], "no process of the session is left (incl. bus-activated ones)");
    assert.equal(existsSync(d.rootDir), false, "runtime dir removed");
    await d.close();
    assert.equal(closeEvents, 1, "close emitted once");
    await assert.rejects(d.swaymsg("-t", "get_outputs"), InvalidStateError);
    await assert.rejects(d.spawnClient("foot", []), InvalidStateError);
  });
});

test("a SIGKILLed owner leaves no orphan parts (pdeathsig)", { timeout: 30000 }, async () => {
  const mod = join(repo, "dist", "agent", "desktop", "headless.js");
  const code = `
    import { HeadlessDesktop } from ${JSON.stringify(mod)};
    const d = await HeadlessDesktop.start({ width: 640, height: 480, refreshHz: 30, baseDir: process.env.WL_TEST_BASE });
    const client = await d.spawnClient("foot", []);
    process.stdout.write(JSON.stringify({ pids: [...d.pids.values(), client.pid], run: d.env.XDG_RUNTIME_DIR, root: d.rootDir }) + "\\n");
    setInterval(() => {}, 1000);
  `;
  const owner = spawn(process.execPath, ["--input-type=module", "-e", code], { env: { ...process.env, WL_TEST_BASE: baseDir }, stdio: ["ignore", "pipe", "pipe"] });
  extraPids.add(owner.pid!);
  let out = "";
  let err = "";
  owner.stdout.on("data", (c: Buffer) => (out += c.toString()));
  owner.stderr.on("data", (c: Buffer) => (err += c.toString()));
  const info = await until("the owner's desktop", 20000, () => {
    if (owner.exitCode !== null) throw new Error(`owner exited early: ${err}`);
    return out.includes("\n") ? (JSON.parse(out.split("\n")[0]!) as { pids: number[]; run: string; root: string }) : undefined;
  });
  runDirsSeen.add(info.run);
  assert.equal(info.pids.length, 7);
  for (const pid of info.pids) assert.ok(isAlive(pid), `pid ${pid} alive before the kill`);

  const t0 = performance.now();
  owner.kill("SIGKILL");
  await until("every part and the client to die", 10000, () => info.pids.every((p) => !isAlive(p)));
  await until("bus-activated services to die", 5000, () => processesWithEnv("XDG_RUNTIME_DIR", info.run).length === 0);
  console.log(`# orphans gone ${Math.round(performance.now() - t0)} ms after SIGKILL of the owner`);
  // Nobody was left to remove it: that is the one thing a SIGKILL leaves behind.
  rmSync(info.root, { recursive: true, force: true });
});

test("an owner that exits without close() takes the desktop with it and removes its runtime dir", { timeout: 30000 }, async () => {
  const mod = join(repo, "dist", "agent", "desktop", "headless.js");
  const code = `
    import { HeadlessDesktop } from ${JSON.stringify(mod)};
    const d = await HeadlessDesktop.start({ width: 640, height: 480, refreshHz: 30, baseDir: process.env.WL_TEST_BASE });
    process.stdout.write(JSON.stringify({ pids: [...d.pids.values()], run: d.env.XDG_RUNTIME_DIR, root: d.rootDir }) + "\\n");
    process.exit(0); // no close(): the 'exit' hook must clean up
  `;
  const r = await run(process.execPath, ["--input-type=module", "-e", code], { ...process.env, WL_TEST_BASE: baseDir });
  assert.equal(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout.split("\n")[0]!) as { pids: number[]; run: string; root: string };
  runDirsSeen.add(info.run);
  await until("every part to die", 10000, () => info.pids.every((p) => !isAlive(p)));
  assert.equal(existsSync(info.root), false, "runtime dir removed by the exit hook");
});

test("a part that fails or hangs at start makes start() reject with its name and output, leaving nothing behind", { timeout: 30000 }, async () => {
  // A fake sway first on PATH: one that fails with a message, one that never gets ready.
  const fakeBin = join(baseDir, "fake-bin");
  const oldPath = process.env.PATH;
  const { mkdirSync, writeFileSync, readdirSync } = fs;
  mkdirSync(fakeBin, { recursive: true });
  const fake = join(fakeBin, "sway");
  const before = new Set(readdirSync(baseDir));
  try {
    process.env.PATH = `${fakeBin}:${oldPath}`;
    writeFileSync(fake, "#!/bin/sh\necho 'fake sway: cannot open display' >&2\nexit 3\n", { mode: 0o755 });
    const err1 = await HeadlessDesktop.start({ width: 640, height: 480, refreshHz: 30, baseDir }).then(
      () => assert.fail("start() resolved with a failing sway"),
      (e: unknown) => e as DesktopStartError,
    );
    assert.ok(err1 instanceof DesktopStartError, String(err1));
    assert.equal(err1.part, "sway");
    assert.match(err1.message, /sway exited \(code 3\)/);
    assert.match(err1.message, /fake sway: cannot open display/);

    writeFileSync(fake, "#!/bin/sh\necho 'fake sway: waiting forever' >&2\nexec sleep 60\n", { mode: 0o755 });
    const t0 = performance.now();
    const err2 = await HeadlessDesktop.start({ width: 640, height: 480, refreshHz: 30, baseDir, readyTimeoutMs: 700 }).then(
      () => assert.fail("start() resolved with a hanging sway"),
      (e: unknown) => e as DesktopStartError,
    );
    assert.equal(err2.part, "sway");
    assert.match(err2.message, /not ready within 700 ms/);
    assert.match(err2.message, /fake sway: waiting forever/);
    assert.ok(performance.now() - t0 < 5000);
  } finally {
    process.env.PATH = oldPath;
  }
  // Both attempts cleaned up: no new runtime dir left, no process of theirs running.
  const left = readdirSync(baseDir).filter((f) => !before.has(f) && f.startsWith("wl-webrtc-desktop-"));
  assert.deepEqual(left, []);
  assert.deepEqual(processesUnder(`XDG_RUNTIME_DIR=${baseDir}/`), [], "no process of the failed attempts is left");
});

after(() => {
  // Whatever a failed test left behind: stop it by pid.
  for (const run of runDirsSeen) for (const pid of processesWithEnv("XDG_RUNTIME_DIR", run)) extraPids.add(pid);
  for (const pid of extraPids) {
    if (isAlive(pid)) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }
  }
  rmSync(baseDir, { recursive: true, force: true });
});
