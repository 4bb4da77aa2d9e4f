import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));

test("the Debian package builds, carries what it needs, and its wl-webrtc runs", { timeout: 300_000 }, () => {
  const out = mkdtempSync(join(tmpdir(), "wl-deb-"));
  try {
    const built = execFileSync("bash", [join(ROOT, "packaging/build-deb.sh"), out], { encoding: "utf8", cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] });
    const deb = built.trim().split("\n").pop()!;
    assert.match(deb, /wl-webrtc_\d+\.\d+\.\d+_(amd64|arm64)\.deb$/);
    const info = execFileSync("dpkg-deb", ["--field", deb, "Package", "Version", "Depends"], { encoding: "utf8" });
    assert.match(info, /Package: wl-webrtc/);
    for (const dep of ["libpipewire-0.3-0", "libavcodec59", "pipewire", "xdg-desktop-portal"]) assert.ok(info.includes(dep), `Depends lacks ${dep}: ${info}`);

    const root = join(out, "root");
    execFileSync("dpkg-deb", ["-x", deb, root]);
    for (const f of ["usr/bin/wl-webrtc", "usr/lib/wl-webrtc/node/bin/node", "usr/lib/wl-webrtc/native/build/Release/wl_webrtc.node", "usr/lib/wl-webrtc/web-client/dist/index.html", "usr/lib/systemd/user/wl-webrtc.service", "usr/share/doc/wl-webrtc/config.example.toml"])
      assert.ok(existsSync(join(root, f)), `missing ${f}`);
    assert.ok(readdirSync(join(root, "usr/lib/wl-webrtc/native/preload/build")).length >= 3, "preload helpers packaged");
    assert.equal(statSync(join(root, "usr/bin/wl-webrtc")).mode & 0o111, 0o111);
    assert.match(readFileSync(join(root, "usr/lib/systemd/user/wl-webrtc.service"), "utf8"), /^ExecStart=\/usr\/bin\/wl-webrtc serve$/m);
    assert.ok(!existsSync(join(root, "usr/lib/wl-webrtc/node_modules/typescript")), "no dev dependencies");

    // The packaged command runs with its bundled Node, outside the source tree.
    const env = { PATH: "/usr/bin:/bin", HOME: out, XDG_STATE_HOME: join(out, "state"), XDG_CONFIG_HOME: join(out, "config") };
    const bin = join(root, "usr/bin/wl-webrtc");
    const v = spawnSync(bin, ["--version"], { env, encoding: "utf8", cwd: out });
    assert.equal(v.status, 0, v.stderr);
    assert.equal(v.stdout.trim(), JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version);
    const c = spawnSync(bin, ["config", "check", join(root, "usr/share/doc/wl-webrtc/config.example.toml")], { env, encoding: "utf8", cwd: out });
    assert.equal(c.status, 0, c.stderr);
    const t = spawnSync(bin, ["token", "--role", "view", "--ttl", "60"], { env, encoding: "utf8", cwd: out });
    assert.equal(t.status, 0, t.stderr);
    assert.match(t.stdout, /^[\w-]+\.[\w-]+\.[\w-]+\n$/);
    // The addon loads from the package (the capture probe needs it).
    const node = join(root, "usr/lib/wl-webrtc/node/bin/node");
    const a = spawnSync(node, ["-e", `const a = require(${JSON.stringify(join(root, "usr/lib/wl-webrtc/native/build/Release/wl_webrtc.node"))}); console.log(typeof a.PipeWireCapture)`], { env, encoding: "utf8" });
    assert.equal(a.stdout.trim(), "function", a.stderr);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
