import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, writeFileSync, statSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { hello } from "../helpers/ws-client.js";
import { CloseCode } from "../../agent/signaling/protocol.js";

const MAIN = fileURLToPath(new URL("../../agent/cli/main.js", import.meta.url));
const home = mkdtempSync(join(tmpdir(), "wl-cli-"));
after(() => rmSync(home, { recursive: true, force: true }));
const env = { ...process.env, XDG_CONFIG_HOME: join(home, "config"), XDG_STATE_HOME: join(home, "state"), WL_WEBRTC_SECRET: "" };
const cfg = join(home, "test.toml");
writeFileSync(cfg, '[server]\nport = 0\n[metrics]\nport = 0\n[desktop]\nmode = "none"\n');

function run(...args: string[]) {
  return spawnSync(process.execPath, [MAIN, ...args], { env, encoding: "utf8" });
}

test("--version and --help", () => {
  const v = run("--version");
  assert.equal(v.status, 0);
  assert.match(v.stdout, /^\d+\.\d+\.\d+\n$/);
  const h = run("--help");
  assert.equal(h.status, 0);
  assert.match(h.stdout, /serve/);
  assert.match(h.stdout, /Exit codes/);
});

test("usage errors exit 2", () => {
  assert.equal(run("frobnicate").status, 2);
  assert.equal(run("token", "--role", "admin").status, 2);
  assert.equal(run("token", "--role", "view", "--ttl", "soon").status, 2);
  assert.equal(run("token", "--role", "view", "--ttl", "400d").status, 2);
  assert.equal(run("serve", "--no-such-flag").status, 2);
});

test("config check: exit 0 with the effective config; exit 3 naming the key", () => {
  const ok = run("config", "check", cfg);
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /\[server\]/);
  const bad = join(home, "bad.toml");
  writeFileSync(bad, "[server]\nprot = 1\n");
  const r = run("config", "check", bad);
  assert.equal(r.status, 3);
  assert.match(r.stderr, /server\.prot: unknown key/);
  assert.equal(r.stdout, "");
});

test("serve refuses a broken config with exit 3 and starts nothing", () => {
  const bad = join(home, "bad2.toml");
  writeFileSync(bad, "[server]\nport = 99999\n");
  const r = spawnSync(process.execPath, [MAIN, "serve", "--config", bad], { env, encoding: "utf8", timeout: 10_000 });
  assert.equal(r.status, 3);
  assert.match(r.stderr, /server\.port/);
});

test("token prints only the token; the secret file is created 0600", () => {
  const r = run("token", "--role", "view", "--ttl", "60", "--config", cfg);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n$/);
  assert.equal(statSync(join(home, "state", "wl-webrtc", "secret.key")).mode & 0o777, 0o600);
});

async function startServe(...extra: string[]): Promise<{ child: ChildProcess; url: string; lines: string[] }> {
  const child = spawn(process.execPath, [MAIN, "serve", "--config", cfg, ...extra], { env, stdio: ["ignore", "pipe", "pipe"] });
  const lines: string[] = [];
  const rl = createInterface({ input: child.stdout! });
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`serve did not report its URL: ${lines.join("\n")}`)), 15_000);
    rl.on("line", (line) => {
      lines.push(line);
      try {
        const j = JSON.parse(line) as { msg?: string; url?: string };
        if (j.msg === "signaling listening" && j.url) {
          clearTimeout(t);
          resolve(j.url);
        }
      } catch {
        // not JSON: ignore
      }
    });
    child.once("exit", (code) => reject(new Error(`serve exited ${code}: ${lines.join("\n")}`)));
  });
  return { child, url, lines };
}

test("done-when: `token --role control --ttl 60` then hello is accepted; the same hello without it is refused; SIGTERM exits 0", async () => {
  const { child, url, lines } = await startServe();
  try {
    const t = run("token", "--role", "control", "--ttl", "60", "--config", cfg);
    assert.equal(t.status, 0);
    const token = t.stdout.trim();
    const ws = `${url.replace(/^http/, "ws")}/signal`;
    const ok = await hello(ws, token);
    assert.equal(ok.welcome?.role, "control");
    ok.client.close();
    const refused = await hello(ws, undefined);
    assert.equal(refused.closed?.code, CloseCode.unauthorized);
    // The placeholder page is served.
    const page = await fetch(`${url}/`);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /wl-webrtc/);
    // No token ever reaches the log.
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(!lines.join("\n").includes(token), "the token leaked into the log");
    assert.ok(lines.some((l) => l.includes('"reason":"auth"')), "the refusal was logged");
  } finally {
    child.kill("SIGTERM");
  }
  const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
  assert.equal(code, 0);
});

test("desktop.mode = session with no Wayland session: exit 4 with the reason", () => {
  const f = join(home, "session.toml");
  writeFileSync(f, '[server]\nport = 0\n[metrics]\nport = 0\n[desktop]\nmode = "session"\n');
  const r = spawnSync(process.execPath, [MAIN, "serve", "--config", f], { env: { ...env, XDG_RUNTIME_DIR: join(home, "no-runtime"), WAYLAND_DISPLAY: "" }, encoding: "utf8", timeout: 20_000 });
  assert.equal(r.status, 4, r.stderr);
  assert.match(r.stderr, /no usable Wayland session/);
});

test("serve --headless runs its own desktop and leaves no process behind after SIGTERM", async () => {
  const { child, lines } = await startServe("--headless");
  const runtimeDir = await (async () => {
    for (let i = 0; i < 200; i++) {
      for (const l of lines) {
        try {
          const j = JSON.parse(l) as { msg?: string; runtimeDir?: string };
          if (j.msg === "headless desktop running" && j.runtimeDir) return j.runtimeDir;
        } catch {
          // not JSON
        }
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`no headless desktop: ${lines.join("\n")}`);
  })();
  const { processesWithEnv } = await import("../../agent/desktop/procs.js");
  const before = processesWithEnv("XDG_RUNTIME_DIR", runtimeDir);
  assert.ok(before.length >= 5, `desktop processes: ${before.length}`);
  child.kill("SIGTERM");
  const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
  assert.equal(code, 0);
  const { existsSync } = await import("node:fs");
  assert.deepEqual(processesWithEnv("XDG_RUNTIME_DIR", runtimeDir).filter((p) => !isZombie(p)), []);
  assert.equal(existsSync(runtimeDir), false, "runtime dir removed");
});

function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}

test("probe names every encoder backend, says why the unavailable ones are, and which one would be used", () => {
  const r = run("probe", "--json", "--config", cfg);
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { encoders: { name: string; available: boolean; reason: string }[]; chosen: string | null };
  assert.deepEqual(j.encoders.map((e) => e.name).sort(), ["nvenc", "openh264", "vaapi", "x264"]);
  for (const e of j.encoders) assert.ok(e.reason.length > 0, `${e.name} has a reason`);
  assert.ok(j.encoders.find((e) => e.name === "x264")?.available, "libx264 is installed by setup");
  assert.ok(j.chosen !== null && j.encoders.find((e) => e.name === j.chosen)?.available);
  const human = run("probe", "--config", cfg);
  assert.match(human.stdout, /^encoder: \w+/m);
  // DMA-BUF capture: only with VA-API first and a render node; the reason otherwise.
  const dmabuf = (JSON.parse(r.stdout) as { dmabuf: { device: string | null; reason: string } }).dmabuf;
  const vaapi = j.encoders.find((e) => e.name === "vaapi")!;
  if (!existsSync("/dev/dri")) {
    assert.equal(dmabuf.device, null);
    assert.match(dmabuf.reason, /^shared memory: .*no \/dev\/dri/);
    assert.match(human.stdout, /^capture: shared memory: .*no \/dev\/dri/m);
  } else {
    assert.equal(dmabuf.device !== null, j.chosen === "vaapi" && vaapi.available, dmabuf.reason);
  }
});
