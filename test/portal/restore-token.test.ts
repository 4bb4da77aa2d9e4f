import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm, stat, writeFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { RestoreTokenStore } from "../../agent/portal/index.js";

describe("RestoreTokenStore", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp("/tmp/wl-portal-token-");
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("creates the state dir 0700 and the file 0600, and loads what it saved", async () => {
    const stateDir = join(dir, "a", "wl-webrtc");
    const s = new RestoreTokenStore(stateDir);
    assert.equal(await s.load(), undefined);
    await s.save({ kind: "screencast", token: "tok-1" });
    assert.equal((await stat(stateDir)).mode & 0o777, 0o700);
    assert.equal((await stat(s.file)).mode & 0o777, 0o600);
    assert.deepEqual(await s.load(), { kind: "screencast", token: "tok-1" });
  });

  it("replaces atomically: a new inode, the newest token, no temporary files", async () => {
    const s = new RestoreTokenStore(join(dir, "b"));
    await s.save({ kind: "screencast", token: "old" });
    const ino = (await stat(s.file)).ino;
    await s.save({ kind: "remote-desktop", token: "new" });
    assert.notEqual((await stat(s.file)).ino, ino);
    assert.deepEqual(await s.load(), { kind: "remote-desktop", token: "new" });
    assert.deepEqual(await readdir(join(dir, "b")), ["restore-token"]);
  });

  it("keeps 0600 even under a permissive umask", async () => {
    const old = process.umask(0);
    try {
      const s = new RestoreTokenStore(join(dir, "c"));
      await s.save({ kind: "screencast", token: "x" });
      assert.equal((await stat(s.file)).mode & 0o777, 0o600);
      assert.equal((await stat(join(dir, "c"))).mode & 0o777, 0o700);
    } finally {
      process.umask(old);
    }
  });

  it("reads a bare token as a ScreenCast token, ignores garbage, rejects multi-line tokens", async () => {
    const d = join(dir, "d");
    await mkdir(d);
    const s = new RestoreTokenStore(d);
    await writeFile(s.file, "abc-123\n");
    assert.deepEqual(await s.load(), { kind: "screencast", token: "abc-123" });
    await writeFile(s.file, '{"kind":"other","token":"x"}');
    assert.equal(await s.load(), undefined);
    await assert.rejects(s.save({ kind: "screencast", token: "a\nb" }), TypeError);
    await s.clear();
    await s.clear();
    assert.equal(await s.load(), undefined);
    assert.equal(await readFile(s.file, "utf8").catch(() => "gone"), "gone");
  });
});
