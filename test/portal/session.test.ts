/**
 * PortalSession against the real xdg-desktop-portal 1.16 + xdg-desktop-portal-wlr 0.7 on the agent's
 * real headless sway desktop with PipeWire (agent/desktop HeadlessDesktop).
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { closeSync, fstatSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { PortalSession, RestoreTokenStore, type PortalClosedInfo } from "../../agent/portal/index.js";
import { UnsupportedError } from "../../agent/util/errors.js";
import type { HeadlessDesktop } from "../../agent/desktop/index.js";
import { busOf, openFdCount, sessionOptions, settleFds, socketInode, startDesktop, unixPeer } from "./helpers.js";

const execFileP = promisify(execFile);

describe("PortalSession on a real headless sway desktop", () => {
  let d: HeadlessDesktop;
  let bus: string;
  const opts = (dir: string, over: Parameters<typeof sessionOptions>[2] = {}) => sessionOptions(bus, join(d.rootDir, dir), over);
  before(async () => {
    d = await startDesktop();
    bus = busOf(d);
  });
  after(async () => {
    await d?.close();
  });

  it("starts a session: a PipeWire node id and a real socket fd connected to the PipeWire daemon", async () => {
    const s = await PortalSession.open(opts("st-basic"));
    let closes = 0;
    s.on("close", () => closes++);
    try {
      assert.equal(s.streams.length, 1);
      const st = s.streams[0]!;
      assert.ok(Number.isInteger(st.nodeId) && st.nodeId > 0, `node id ${st.nodeId}`);
      assert.deepEqual(st.size, [1280, 720]);
      assert.deepEqual(st.position, [0, 0]);
      assert.equal(st.sourceType, "monitor");
      assert.equal(s.remoteDesktop, null, "xdpw 0.7 offers no RemoteDesktop");
      assert.equal(s.restoreTokenUsed, false);

      const fd = s.pipewireFd;
      assert.ok(fstatSync(fd).isSocket(), "the fd from OpenPipeWireRemote is a socket");
      const inode = socketInode(fd);
      assert.ok(inode !== undefined, "readlink /proc/self/fd/N is socket:[inode]");
      const peer = await unixPeer(inode);
      assert.ok(peer, `ss -xp lists our socket ${inode}`);
      const pwPid = d.pids.get("pipewire");
      assert.ok(
        peer.processes.some((p) => p.name === "pipewire" && p.pid === pwPid),
        `the socket's peer is the PipeWire daemon (pid ${pwPid}); got ${JSON.stringify(peer.processes)}`,
      );

      // The node the portal named is a real node in that PipeWire daemon.
      const { stdout } = await execFileP("pw-cli", ["info", String(st.nodeId)], { env: { ...process.env, ...d.env } });
      assert.match(stdout, /type: PipeWire:Interface:Node/);
      assert.match(stdout, new RegExp(`id: ${st.nodeId}\\b`));
    } finally {
      await s.close();
    }
    await s.close();
    assert.equal(closes, 1, "close is emitted once, however often close() is called");
    assert.equal(s.closed, true);
  });

  it("a second session reuses the restore token and the token file is replaced (0600 in a 0700 dir)", async () => {
    const stateDir = join(d.rootDir, "st-token", "wl-webrtc");
    const store = new RestoreTokenStore(stateDir);
    const s1 = await PortalSession.open(sessionOptions(bus, stateDir));
    await s1.close();
    assert.equal(s1.restoreTokenUsed, false, "nothing saved yet");
    const t1 = await store.load();
    assert.ok(t1, "the restore token from Start was saved");
    assert.equal(t1.kind, "screencast");
    assert.equal(statSync(store.file).mode & 0o777, 0o600);
    assert.equal(statSync(stateDir).mode & 0o777, 0o700);

    const ino1 = statSync(store.file).ino;
    const s2 = await PortalSession.open(sessionOptions(bus, stateDir));
    await s2.close();
    assert.equal(s2.restoreTokenUsed, true, "the saved token was passed to SelectSources");
    assert.equal(s2.streams.length, 1);
    const t2 = await store.load();
    assert.ok(t2);
    // xdg-desktop-portal 1.16 returns the restored token unchanged; the file is still rewritten
    // (atomically: a new inode) with whatever the newest Start returned.
    assert.notEqual(statSync(store.file).ino, ino1, "the token file was replaced after the second Start");
    assert.equal(statSync(store.file).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(stateDir), ["restore-token"], "no temporary files left behind");

    // persist: false neither uses nor touches the token.
    const s3 = await PortalSession.open(sessionOptions(bus, stateDir, { persist: false }));
    await s3.close();
    assert.equal(s3.restoreTokenUsed, false);
    assert.equal((await store.load())?.token, t2.token);
  });

  it("a stale token does not wedge anything: the portal ignores it and the new token replaces it", async () => {
    const stateDir = join(d.rootDir, "st-stale");
    const store = new RestoreTokenStore(stateDir);
    await store.save({ kind: "screencast", token: "00000000-0000-4000-8000-000000000000" });
    const s = await PortalSession.open(sessionOptions(bus, stateDir));
    await s.close();
    assert.equal(s.restoreTokenUsed, true);
    const t = await store.load();
    assert.ok(t && t.token !== "00000000-0000-4000-8000-000000000000", "a fresh token replaced the stale one");
  });

  it("an unsupported cursor mode (metadata on xdpw 0.7) is an UnsupportedError naming the available ones", async () => {
    const before = openFdCount();
    await assert.rejects(PortalSession.open(opts("st-bad", { cursorMode: "metadata" })), (err: unknown) => {
      assert.ok(err instanceof UnsupportedError, String(err));
      assert.match(err.message, /cursor mode "metadata"/);
      assert.match(err.message, /"hidden", "embedded"/);
      return true;
    });
    await assert.rejects(PortalSession.open(opts("st-bad", { sourceTypes: ["window"] })), (err: unknown) => {
      assert.ok(err instanceof UnsupportedError, String(err));
      assert.match(err.message, /source type "window"; it offers "monitor"/);
      return true;
    });
    assert.ok((await settleFds(before)) <= before, "a failed open leaves no fd behind");
  });

  it('cursor mode "auto" asks for embedded on xdpw 0.7 (it offers no metadata) and says so', async () => {
    const s = await PortalSession.open(opts("st-auto", { cursorMode: "auto" }));
    try {
      assert.equal(s.cursorMode, "embedded");
    } finally {
      await s.close();
    }
    const h = await PortalSession.open(opts("st-auto", { cursorMode: "hidden" }));
    try {
      assert.equal(h.cursorMode, "hidden", "an explicit mode is kept as asked");
    } finally {
      await h.close();
    }
  });

  it("rejects bad options with TypeError before touching the bus", async () => {
    await assert.rejects(PortalSession.open(opts("st-bad", { sourceTypes: [] })), TypeError);
    await assert.rejects(PortalSession.open(opts("st-bad", { sourceTypes: ["screen" as "monitor"] })), TypeError);
    await assert.rejects(PortalSession.open(opts("st-bad", { cursorMode: "visible" as "hidden" })), TypeError);
    await assert.rejects(PortalSession.open(opts("st-bad", { stateDir: "" })), TypeError);
  });

  it("takePipeWireFd hands the fd over: close() leaves it open for its new owner", async () => {
    const s = await PortalSession.open(opts("st-take"));
    const fd = s.takePipeWireFd();
    assert.throws(() => s.takePipeWireFd(), /already taken/);
    const inode = socketInode(fd);
    await s.close();
    assert.equal(socketInode(fd), inode, "still open after close()");
    closeSync(fd);
    assert.throws(() => s.takePipeWireFd(), /closed/);
  });

  it("close() releases the fd and the D-Bus connection", async () => {
    const before = openFdCount();
    const s = await PortalSession.open(opts("st-release"));
    const inode = socketInode(s.pipewireFd);
    assert.ok(inode !== undefined);
    await s.close();
    assert.notEqual(socketInode(s.pipewireFd), inode, "the PipeWire fd is closed");
    assert.ok((await settleFds(before)) <= before, `fds back to ${before}, now ${openFdCount()}`);
  });

  it("20 open/close cycles: no growth in this process's fds", async () => {
    const stateDir = join(d.rootDir, "st-cycles");
    // One warm-up cycle: lazily opened things (e.g. libuv's inotify/epoll helpers) are not leaks.
    await (await PortalSession.open(sessionOptions(bus, stateDir))).close();
    const start = await settleFds(0, 300);
    for (let i = 0; i < 20; i++) {
      const s = await PortalSession.open(sessionOptions(bus, stateDir));
      assert.equal(s.restoreTokenUsed, true, `cycle ${i} restored the grant`);
      await s.close();
    }
    const end = await settleFds(start);
    assert.ok(end <= start, `fds: ${start} before, ${end} after 20 cycles`);
  });
});

describe("PortalSession ended from outside", () => {
  it("killing xdg-desktop-portal-wlr: `closed` (backend-exited), then `close`, fd and bus released", async () => {
    const d = await startDesktop();
    try {
      const before = openFdCount();
      const s = await PortalSession.open(sessionOptions(busOf(d), join(d.rootDir, "st")));
      const events: string[] = [];
      let info: PortalClosedInfo | undefined;
      const closed = new Promise<void>((r) => s.on("close", () => (events.push("close"), r())));
      s.on("closed", (i) => (events.push("closed"), (info = i)));
      const pid = d.pids.get("xdpw");
      assert.ok(pid, "xdpw runs");
      process.kill(pid, "SIGKILL");
      await withTimeout(closed, 5000, "no close event after xdpw was killed");
      assert.deepEqual(events, ["closed", "close"]);
      assert.equal(info?.reason, "backend-exited");
      assert.match(info?.message ?? "", /org\.freedesktop\.impl\.portal\.desktop\.wlr/);
      assert.equal(s.closed, true);
      assert.ok((await settleFds(before)) <= before, "fd and bus socket released");
    } finally {
      await d.close();
    }
  });

  it("killing xdg-desktop-portal: `closed` (portal-exited), then `close`", async () => {
    const d = await startDesktop();
    try {
      const before = openFdCount();
      const s = await PortalSession.open(sessionOptions(busOf(d), join(d.rootDir, "st")));
      const events: string[] = [];
      let info: PortalClosedInfo | undefined;
      const closed = new Promise<void>((r) => s.on("close", () => (events.push("close"), r())));
      s.on("closed", (i) => (events.push("closed"), (info = i)));
      const pid = d.pids.get("portal");
      assert.ok(pid, "xdg-desktop-portal runs");
      process.kill(pid, "SIGKILL");
      await withTimeout(closed, 5000, "no close event after xdg-desktop-portal was killed");
      assert.deepEqual(events, ["closed", "close"]);
      assert.equal(info?.reason, "portal-exited");
      assert.ok((await settleFds(before)) <= before, "fd and bus socket released");
    } finally {
      await d.close();
    }
  });
});

describe("PortalSession when the session bus dies", () => {
  it("killing the bus daemon: `closed` (bus-lost), then `close`, fd and socket released", async () => {
    const d = await startDesktop();
    try {
      const before = openFdCount();
      const s = await PortalSession.open(sessionOptions(busOf(d), join(d.rootDir, "st")));
      const events: string[] = [];
      let info: PortalClosedInfo | undefined;
      const closed = new Promise<void>((r) => s.on("close", () => (events.push("close"), r())));
      s.on("closed", (i) => (events.push("closed"), (info = i)));
      const pid = d.pids.get("dbus");
      assert.ok(pid, "the bus daemon runs");
      process.kill(pid, "SIGKILL");
      await withTimeout(closed, 5000, "no close event after the bus died");
      assert.deepEqual(events, ["closed", "close"]);
      assert.equal(info?.reason, "bus-lost");
      assert.ok((await settleFds(before)) <= before, "fd and bus socket released");
    } finally {
      await d.close();
    }
  });
});

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, rej) => (t = setTimeout(() => rej(new Error(what)), ms)))]);
  } finally {
    clearTimeout(t);
  }
}
