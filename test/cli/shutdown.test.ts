import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { hello } from "../helpers/ws-client.js";
import { FUZZ_OFFER } from "../helpers/fuzz-rtc.js";

const MAIN = fileURLToPath(new URL("../../agent/cli/main.js", import.meta.url));
const home = mkdtempSync(join(tmpdir(), "wl-shutdown-"));
after(() => rmSync(home, { recursive: true, force: true }));
const env = { ...process.env, XDG_CONFIG_HOME: join(home, "config"), XDG_STATE_HOME: join(home, "state"), WL_WEBRTC_SECRET: "" };
const cfg = join(home, "test.toml");
writeFileSync(cfg, '[server]\nport = 0\n[metrics]\nport = 0\n[desktop]\nmode = "headless"\n');

/**
 * A real agent process (`wl-webrtc serve` on its own headless desktop, so offers get real peer
 * connections) is sent racing, refused and layout-changing offers, then SIGTERM: it must exit by itself,
 * with 0, within a few seconds. Before the fix, werift transports forgotten by renegotiations kept UDP
 * sockets open and the process stayed alive after logging "stopped". The offers carry no candidates:
 * the agent sends no connectivity check anywhere.
 */
test("after racing and refused offers, SIGTERM: the agent process exits by itself with 0 within 5 s", async () => {
  const child = spawn(process.execPath, [MAIN, "serve", "--config", cfg], { env, stdio: ["ignore", "pipe", "pipe"] });
  const lines: string[] = [];
  createInterface({ input: child.stderr! }).on("line", (l) => lines.push(l));
  const exited = new Promise<{ code: number | null; at: number }>((resolve) => child.once("exit", (code) => resolve({ code, at: performance.now() })));
  try {
    const url = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`serve did not report its URL: ${lines.join("\n")}`)), 30_000);
      createInterface({ input: child.stdout! }).on("line", (line) => {
        lines.push(line);
        try {
          const j = JSON.parse(line) as { msg?: string; url?: string };
          if (j.msg === "signaling listening" && j.url) {
            clearTimeout(t);
            resolve(j.url);
          }
        } catch {
          // not JSON
        }
      });
      void exited.then(({ code }) => reject(new Error(`serve exited ${code}: ${lines.join("\n")}`)));
    });
    const t = spawnSync(process.execPath, [MAIN, "token", "--role", "control", "--ttl", "600", "--config", cfg], { env, encoding: "utf8" });
    assert.equal(t.status, 0, t.stderr);
    const token = t.stdout.trim();
    const ws = `${url.replace(/^http/, "ws")}/signal`;
    const fds = (): number => readdirSync(`/proc/${child.pid}/fd`).length;
    /** The agent's UDP sockets: its fds' socket inodes found in its /proc/<pid>/net/udp and udp6. */
    const udpSockets = (): number => {
      const inodes = new Set<string>();
      for (const f of readdirSync(`/proc/${child.pid}/fd`)) {
        try {
          const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${child.pid}/fd/${f}`));
          if (m) inodes.add(m[1]!);
        } catch {
          // closed meanwhile
        }
      }
      let n = 0;
      for (const table of ["udp", "udp6"]) {
        for (const line of readFileSync(`/proc/${child.pid}/net/${table}`, "utf8").split("\n").slice(1)) {
          const inode = line.trim().split(/\s+/)[9];
          if (inode !== undefined && inodes.has(inode)) n++;
        }
      }
      return n;
    };

    // The first viewer opens the desktop's capture and encoder: wait for its answer.
    const first = await hello(ws, token);
    assert.ok(first.welcome);
    first.client.send({ type: "offer", id: 0, sdp: FUZZ_OFFER.replace(/a=candidate:.*\r\n/g, "") });
    await first.client.next("answer", 30_000);
    await new Promise((r) => setTimeout(r, 1000)); // its candidates gathered (sockets bound)
    const fdsBefore = fds();
    const udpBefore = udpSockets();
    const video = FUZZ_OFFER.slice(FUZZ_OFFER.indexOf("m=video"), FUZZ_OFFER.indexOf("m=application"));
    const good = FUZZ_OFFER.replace(/a=candidate:.*\r\n/g, "");
    const variants = [
      good,
      good.replace("a=group:BUNDLE 0 1\r\n", ""),
      good.replace("a=mid:1", "a=mid:2").replace("BUNDLE 0 1", "BUNDLE 0 2"),
      good.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2") + video.replace(/a=candidate:.*\r\n/g, "").replace("a=mid:0", "a=mid:2"),
    ];
    const flip = (s: string, seed: number): string => {
      const a = [...s];
      for (let k = 0; k < 3; k++) a[(seed * 7919 + k * 104729) % a.length] = String.fromCharCode((seed * 31 + k * 17) % 128);
      return a.join("");
    };
    for (let s = 0; s < 12; s++) {
      const { client, welcome } = await hello(ws, token);
      assert.ok(welcome);
      for (let i = 0; i < 12; i++) {
        client.send({ type: "offer", id: i, sdp: i % 3 === 2 ? flip(good, s * 100 + i) : variants[(s + i) % variants.length] });
        await new Promise((r) => setTimeout(r, i % 2 === 0 ? 0 : 15));
      }
      await new Promise((r) => setTimeout(r, 500));
      client.close();
    }
    // Closed sessions release their viewers' sockets within a few turns of the loop.
    for (let i = 0; i < 50 && udpSockets() > udpBefore; i++) await new Promise((r) => setTimeout(r, 100));
    const fdsAfter = fds();
    const udpAfter = udpSockets();
    first.client.close();
    const t0 = performance.now();
    child.kill("SIGTERM");
    const { code, at } = await Promise.race([exited, new Promise<{ code: null; at: number }>((r) => setTimeout(() => r({ code: null, at: NaN }), 15_000))]);
    const exitMs = at - t0;
    console.log(`# agent fds ${fdsBefore} (one viewer) -> ${fdsAfter}, UDP sockets ${udpBefore} -> ${udpAfter} after 144 offers on 12 closed sessions; SIGTERM -> exit ${code} in ${Number.isNaN(exitMs) ? "(still alive after 15 s)" : `${exitMs.toFixed(0)} ms`}`);
    assert.ok(lines.some((l) => l.includes('"stopped"')), "the agent logged stopped");
    assert.equal(code, 0, `exit code (still running: ${Number.isNaN(exitMs)}); log tail:\n${lines.slice(-5).join("\n")}`);
    assert.ok(exitMs < 5000, `exit took ${exitMs.toFixed(0)} ms`);
    assert.equal(udpAfter, udpBefore, `agent UDP sockets ${udpBefore} -> ${udpAfter} (fds ${fdsBefore} -> ${fdsAfter})`);
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await exited;
    }
  }
});
