import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse as parseToml } from "smol-toml";
import { loadConfig, parseConfig } from "../../agent/config/load.js";
import { ConfigError } from "../../agent/util/errors.js";

const repoConfig = new URL("../../../config/wl-webrtc.toml", import.meta.url);
const dir = mkdtempSync(join(tmpdir(), "wl-config-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
function file(text: string): string {
  const f = join(dir, `c${n++}.toml`);
  writeFileSync(f, text);
  return f;
}
function problems(text: string): string[] {
  try {
    loadConfig(file(text), {});
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    return [...err.problems];
  }
  assert.fail("expected the configuration to be refused");
}

function keyPaths(v: unknown, prefix = ""): string[] {
  if (v === null || typeof v !== "object" || Array.isArray(v)) return [prefix];
  return Object.entries(v).flatMap(([k, x]) => keyPaths(x, prefix ? `${prefix}.${k}` : k));
}

test("config/wl-webrtc.toml lists every key, each with its default", () => {
  const raw = parseToml(readFileSync(repoConfig, "utf8"));
  const defaults = parseConfig({}, "(defaults)");
  assert.deepEqual(keyPaths(raw).sort(), keyPaths(defaults).sort(), "the default file and the schema list the same keys");
  assert.deepEqual(parseConfig(raw, "default file"), defaults, "every value in the file is the default");
});

test("an empty file and a missing default file both give the defaults", () => {
  const empty = loadConfig(file(""), {}).config;
  const none = loadConfig(undefined, { XDG_CONFIG_HOME: join(dir, "nothing-here"), XDG_STATE_HOME: join(dir, "state") });
  assert.equal(none.file, undefined);
  assert.equal(none.config.server.port, 8780);
  assert.equal(empty.server.port, 8780);
});

test("broken TOML names the file, line and column", () => {
  const p = problems('[server]\nport = 80\nhost = "a\n');
  assert.equal(p.length, 1);
  assert.match(p[0]!, /c\d+\.toml:3:\d+: not valid TOML/);
});

test("a wrong type names the key, what was expected and what was found", () => {
  const [p] = problems('[server]\nport = "eighty"\n');
  assert.match(p!, /c\d+\.toml: server\.port: expected number, found the string "eighty"/);
});

test("an unknown key is an error that names it and the valid ones", () => {
  const [p] = problems("[signaling]\nmax_sesions = 3\n");
  assert.match(p!, /signaling\.max_sesions: unknown key \(expected one of: .*max_sessions/);
  const [top] = problems("[sever]\nport = 1\n");
  assert.match(top!, /: sever: unknown key/);
});

test("out-of-range values name the bound", () => {
  const [p] = problems("[server]\nport = 70000\n");
  assert.match(p!, /server\.port: expected a value <= 65535, found number 70000/);
  const [q] = problems("[signaling]\nmax_sessions = 0\n");
  assert.match(q!, /signaling\.max_sessions: expected a value >= 1, found number 0/);
});

test("a bad enum value lists the choices", () => {
  const [p] = problems('[capture]\ncursor_mode = "visible"\n');
  assert.match(p!, /capture\.cursor_mode: expected one of "auto", "hidden", "embedded", "metadata", found the string "visible"/);
});

test("a wrong type inside a list names the element", () => {
  const [p] = problems('[capture]\nsource_types = ["monitor", 3]\n');
  assert.match(p!, /capture\.source_types\.1: /);
});

test("several problems are all reported at once", () => {
  const p = problems('[server]\nport = -1\nhost = 5\n[log]\nlevel = "loud"\n');
  assert.equal(p.length, 3, p.join("\n"));
});

test("cross-field rules: tls_cert without tls_key", () => {
  const [p] = problems('[server]\ntls_cert = "/etc/cert.pem"\n');
  assert.match(p!, /server\.tls_cert \/ server\.tls_key: expected both or neither/);
});

test("a file that cannot be read is a configuration error naming it", () => {
  assert.throws(() => loadConfig(join(dir, "missing.toml"), {}), (err: unknown) => err instanceof ConfigError && /missing\.toml: cannot read: ENOENT/.test(err.message));
});

test("relative paths are relative to the config file; state paths default under state_dir", () => {
  const f = file('state_dir = "state"\n[server]\ntls_cert = "c.pem"\ntls_key = "k.pem"\n');
  const { config } = loadConfig(f, {});
  assert.equal(config.state_dir, join(dir, "state"));
  assert.equal(config.server.tls_cert, join(dir, "c.pem"));
  assert.equal(config.auth.secret_file, join(dir, "state", "secret.key"));
});
