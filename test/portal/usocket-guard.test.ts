/**
 * usocket 1.1.0 (dbus-next's socket for unix:path= buses) frees a closed socket's libuv handle while
 * libuv is still closing it when a GC comes first; the process then aborts in uv__finish_close (seen
 * once in test/capture/desktop.test.ts). agent/util/usocket-guard.ts keeps the closed wrapper alive
 * until libuv is done. Both sides run in a child process against a real dbus-daemon, with a GC forced
 * right after every close and glibc's malloc told to overwrite freed memory at once (so a freed
 * handle is never read back intact by luck).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { tmpdir } from "node:os";
import { mkdtempSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, it, before, after } from "node:test";
import { guardUsocketClose } from "../../agent/util/usocket-guard.js";
import { TestDesktop } from "./desktop-fixture.js";

const CHILD = fileURLToPath(new URL("./usocket-close-child.js", import.meta.url));
const CONNECT_CHILD = fileURLToPath(new URL("./usocket-connect-child.js", import.meta.url));

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function runChild(address: string, mode: "guarded" | "unguarded", script = CHILD): Promise<Exit> {
  return new Promise((resolve, reject) => {
    // No core file for the abort that is expected (ulimit -c 0; exec keeps the signal the child's).
    const child = spawn("/bin/sh", ["-c", 'ulimit -c 0 && exec "$0" "$@"', process.execPath, "--expose-gc", script, address, mode], {
      cwd: tmpdir(),
      // Freed memory filled with 0x55 at once (tcache off: its frees skip the fill).
      env: { ...process.env, MALLOC_PERTURB_: "85", GLIBC_TUNABLES: "glibc.malloc.tcache_count=0" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const kill = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.once("error", reject);
    child.once("exit", (code, signal) => {
      clearTimeout(kill);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

describe("usocket close guard", { timeout: 120_000 }, () => {
  let d: TestDesktop;
  before(async () => {
    d = await TestDesktop.start("bare-bus");
  });
  after(async () => {
    await d?.close();
  });

  it("usocket is what dbus-next uses here, and the guard installs", () => {
    assert.equal(guardUsocketClose(), true, "usocket not found next to dbus-next (or its USocket changed shape)");
  });

  it("without the guard, usocket still frees a handle libuv is closing (when this fails, usocket was fixed and the guard can go)", async () => {
    const r = await runChild(d.busAddress, "unguarded");
    assert.ok(r.signal === "SIGABRT" || r.signal === "SIGSEGV", `child exited ${r.code}/${r.signal}: ${r.stdout}${r.stderr}`);
    if (r.signal === "SIGABRT") assert.match(r.stderr, /uv__finish_close/);
  });

  it("with the guard (through PortalBus), 30 connections closed with a GC right after each: no abort, nothing kept", async () => {
    const r = await runChild(d.busAddress, "guarded");
    assert.equal(r.signal, null, `child killed by ${r.signal}: ${r.stderr}`);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^survived 30$/m);
    assert.match(r.stdout, /^closing 0$/m, "closed wrappers are let go once libuv is done with them");
  });

  it("a socket ended or closed while it is still connecting: the process dies unguarded, and waits for the connection guarded", async () => {
    const sock = join(mkdtempSync(join(tmpdir(), "wl-usock-")), "s");
    try {
      const bare = await runChild(`${sock}-bare`, "unguarded", CONNECT_CHILD);
      assert.ok(bare.signal !== null || bare.code !== 0, `unguarded child exited ${bare.code} ${bare.signal}: ${bare.stdout}${bare.stderr.slice(-300)}`);
      const safe = await runChild(`${sock}-safe`, "guarded", CONNECT_CHILD);
      assert.equal(safe.signal, null, safe.stderr.slice(-500));
      assert.equal(safe.code, 0, safe.stderr.slice(-500));
      assert.match(safe.stdout, /survived 40/);
    } finally {
      rmSync(dirname(sock), { recursive: true, force: true });
    }
  });
});
