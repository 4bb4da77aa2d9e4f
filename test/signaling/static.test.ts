import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startTestAgent } from "../helpers/agent.js";

/** The web client's files: nothing outside the web root is served, through `..` or through a symlink. */

/** GET path from 127.0.0.1:port: status and body. */
function get(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

test("web root: a symlink that leads out of it is not followed (404); one that stays inside is served", async () => {
  const dir = mkdtempSync(join(tmpdir(), "wl-webroot-"));
  const root = join(dir, "root");
  const outside = join(dir, "outside");
  mkdirSync(root);
  mkdirSync(outside);
  writeFileSync(join(outside, "secret.key"), "SECRET-0123456789\n");
  writeFileSync(join(root, "index.html"), "<p>hi</p>\n");
  mkdirSync(join(root, "assets"));
  writeFileSync(join(root, "assets", "a.txt"), "inside\n");
  symlinkSync(join(outside, "secret.key"), join(root, "leak.txt"));
  symlinkSync(outside, join(root, "out"));
  symlinkSync("../outside/secret.key", join(root, "assets", "rel.txt"));
  symlinkSync(join(root, "assets", "a.txt"), join(root, "ok.txt"));
  // The configured root may itself be a link: its real path is the boundary.
  symlinkSync(root, join(dir, "root-link"));
  const t = await startTestAgent({ server: { web_root: join(dir, "root-link") } });
  try {
    const port = t.agent.signaling.address.port;
    for (const path of ["/leak.txt", "/out/secret.key", "/assets/rel.txt", "/out/", "/%2e%2e/outside/secret.key"]) {
      const r = await get(port, path);
      assert.equal(r.status, 404, `${path}: ${r.status}`);
      assert.doesNotMatch(r.body, /SECRET/);
    }
    assert.equal((await get(port, "/")).status, 200);
    assert.equal((await get(port, "/ok.txt")).body, "inside\n");
    assert.equal((await get(port, "/assets/a.txt")).body, "inside\n");
  } finally {
    await t.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
