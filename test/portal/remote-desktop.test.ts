/**
 * The RemoteDesktop paths, Session.Closed, a cancelled and an unanswered Start, through the real
 * xdg-desktop-portal 1.16 and a real
 * PipeWire, with a scripted backend (test-backend.ts) behind the portal: xdpw 0.7 on this machine has
 * no RemoteDesktop and never closes a session by itself.
 */
import assert from "node:assert/strict";
import { fstatSync } from "node:fs";
import { join } from "node:path";
import { Writable } from "node:stream";
import { describe, it } from "node:test";
import { createLogger } from "../../agent/log/logger.js";
import {
  PortalCancelledError,
  PortalSession,
  PortalTimeoutError,
  RestoreTokenStore,
  type PortalClosedInfo,
} from "../../agent/portal/index.js";
import { TestDesktop } from "./desktop-fixture.js";
import { openFdCount, sessionOptions, settleFds } from "./helpers.js";
import { TestBackend, type TestBackendConfig } from "./test-backend.js";

const SC = "org.freedesktop.impl.portal.ScreenCast";
const RD = "org.freedesktop.impl.portal.RemoteDesktop";

async function withBackend(config: Partial<TestBackendConfig>, body: (d: TestDesktop, b: TestBackend) => Promise<void>): Promise<void> {
  let backend: TestBackend | undefined;
  const d = await TestDesktop.start("test-backend", {
    beforePortal: async (t) => {
      backend = await TestBackend.start(t.busAddress, { rdDevices: 3, rdCreateFails: false, nodeId: 42, ...config });
    },
  });
  try {
    await body(d, backend!);
  } finally {
    backend?.close();
    await d.close();
  }
}

/** A logger whose records land in an array, to check what the user is told. */
function recordingLogger(): { log: ReturnType<typeof createLogger>; lines: { level: number; msg: string }[] } {
  const lines: { level: number; msg: string }[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split("\n")) if (l.trim()) lines.push(JSON.parse(l) as { level: number; msg: string });
      cb();
    },
  });
  return { log: createLogger({ level: "debug", pretty: "never", destination }), lines };
}

describe("PortalSession with RemoteDesktop offered by the portal", () => {
  it("non-zero device types and a working session: one combined RemoteDesktop + ScreenCast session", async () => {
    await withBackend({ rdDevices: 3 }, async (d, b) => {
      const s = await PortalSession.open(sessionOptions(d.busAddress, join(d.dir, "st"), { persist: false }));
      try {
        assert.deepEqual(s.remoteDesktop, { devices: 3 });
        assert.deepEqual(s.streams, [{ nodeId: 42, size: [640, 480], position: [0, 0], sourceType: "monitor" }]);
        assert.ok(fstatSync(s.pipewireFd).isSocket());
        assert.deepEqual(b.calls, [`${RD}.CreateSession`, `${SC}.SelectSources`, `${RD}.SelectDevices`, `${RD}.Start`]);
      } finally {
        await s.close();
      }
      assert.ok(await b.waitForCall("org.freedesktop.impl.portal.Session.Close"), "close() closed the session at the portal");
    });
  });

  it("persist on a combined session: never on SelectSources; xdg-desktop-portal 1.16 (RemoteDesktop v1) cannot persist it at all", async () => {
    await withBackend({ rdDevices: 3 }, async (d, b) => {
      const stateDir = join(d.dir, "st");
      const store = new RestoreTokenStore(stateDir);
      const { log, lines } = recordingLogger();
      const s1 = await PortalSession.open(sessionOptions(d.busAddress, stateDir, { log }));
      await s1.close();
      assert.deepEqual(s1.remoteDesktop, { devices: 3 });
      // The portal rejects persist_mode/restore_token on SelectSources for a RemoteDesktop session
      // ("Remote desktop sessions cannot persist"); with RemoteDesktop v1 SelectDevices has none either.
      const keys = b.options.filter((o) => o.call === `${SC}.SelectSources` || o.call === `${RD}.SelectDevices`).map((o) => Object.keys(o.options as object));
      assert.ok(keys.length === 2 && keys.every((k) => !k.includes("persist_mode") && !k.includes("restore_token")), JSON.stringify(keys));
      assert.equal(await store.load(), undefined, "no token to save");
      assert.ok(lines.some((l) => /cannot persist a grant/.test(l.msg)), "the log says the grant will not persist");
    });
  });

  it("AvailableDeviceTypes = 0 (trap 5): ScreenCast alone, RemoteDesktop is not even tried", async () => {
    await withBackend({ rdDevices: 0 }, async (d, b) => {
      const s = await PortalSession.open(sessionOptions(d.busAddress, join(d.dir, "st"), { persist: false }));
      await s.close();
      assert.equal(s.remoteDesktop, null);
      assert.deepEqual(b.calls.filter((c) => c.startsWith(RD)), []);
    });
  });

  it("RemoteDesktop.CreateSession failing: falls back to ScreenCast alone and logs why", async () => {
    await withBackend({ rdDevices: 3, rdCreateFails: true }, async (d, b) => {
      const { log, lines } = recordingLogger();
      const s = await PortalSession.open(sessionOptions(d.busAddress, join(d.dir, "st"), { persist: false, log }));
      await s.close();
      assert.equal(s.remoteDesktop, null);
      assert.equal(s.streams.length, 1);
      // (The portal itself closes the half-made RemoteDesktop session after the failed CreateSession.)
      const methods = b.calls.filter((c) => !c.endsWith("Session.Close"));
      assert.deepEqual(methods, [`${RD}.CreateSession`, `${SC}.CreateSession`, `${SC}.SelectSources`, `${SC}.Start`]);
      const warn = lines.find((l) => l.level === 40 && /falling back to ScreenCast alone/.test(l.msg));
      assert.ok(warn, `a warning says why; got ${JSON.stringify(lines.map((l) => l.msg))}`);
    });
  });

  it("the backend closing the session (user revoked sharing): `closed` with reason revoked, then `close`", async () => {
    await withBackend({ rdDevices: 0 }, async (d, b) => {
      const before = openFdCount();
      const s = await PortalSession.open(sessionOptions(d.busAddress, join(d.dir, "st"), { persist: false }));
      const events: string[] = [];
      let info: PortalClosedInfo | undefined;
      const done = new Promise<void>((r) => s.on("close", () => (events.push("close"), r())));
      s.on("closed", (i) => (events.push("closed"), (info = i)));
      b.emitClosed(s.sessionHandle);
      await Promise.race([done, new Promise((_, rej) => setTimeout(() => rej(new Error("no close event")), 5000))]);
      assert.deepEqual(events, ["closed", "close"]);
      assert.equal(info?.reason, "revoked");
      assert.match(info?.message ?? "", /stopped or revoked/);
      assert.ok((await settleFds(before)) <= before, "fd and bus socket released");
    });
  });

  it("Start answered 1 (the user said no): PortalCancelledError that says to allow sharing", async () => {
    await withBackend({ rdDevices: 0, startAnswer: 1 }, async (d, b) => {
      await assert.rejects(PortalSession.open(sessionOptions(d.busAddress, join(d.dir, "st"), { persist: false })), (err: unknown) => {
        assert.ok(err instanceof PortalCancelledError, String(err));
        assert.equal(err.step, "ScreenCast.Start");
        assert.match(err.message, /cancelled/);
        assert.match(err.message, /Allow screen sharing/);
        return true;
      });
      assert.ok(await b.waitForCall("org.freedesktop.impl.portal.Session.Close"), "the half-made session was closed");
    });
  });

  it("Start never answered: PortalTimeoutError at the deadline, and the request is withdrawn", async () => {
    await withBackend({ rdDevices: 0, startAnswer: "never" }, async (d, b) => {
      const t0 = Date.now();
      await assert.rejects(PortalSession.open(sessionOptions(d.busAddress, join(d.dir, "st"), { persist: false, timeoutMs: 700 })), (err: unknown) => {
        assert.ok(err instanceof PortalTimeoutError, String(err));
        assert.equal(err.step, "ScreenCast.Start");
        assert.match(err.message, /did not answer within 700 ms/);
        return true;
      });
      const ms = Date.now() - t0;
      assert.ok(ms >= 600 && ms < 5000, `gave up after ${ms} ms`);
      // Our Request.Close and Session.Close reached the portal, which passed them on to the backend.
      const until = Date.now() + 2000;
      const both = () => b.calls.includes("org.freedesktop.impl.portal.Request.Close") && b.calls.includes("org.freedesktop.impl.portal.Session.Close");
      while (!both() && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      assert.ok(both(), `Request.Close and Session.Close reached the backend: ${JSON.stringify(b.calls)}`);
    });
  });
});
