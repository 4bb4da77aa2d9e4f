import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { WebSocket } from "ws";
import { testConfig } from "../helpers/agent.js";
import { Agent } from "../../agent/agent.js";
import { createLogger, silentLogger } from "../../agent/log/logger.js";

const dir = mkdtempSync(join(tmpdir(), "wl-tls-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const cert = join(dir, "cert.pem");
const key = join(dir, "key.pem");
execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert], { stdio: "ignore" });

test("with a certificate the agent serves https and wss", async () => {
  const { config, cleanup } = testConfig({ server: { tls_cert: cert, tls_key: key } });
  const agent = await Agent.start({ config, log: silentLogger(), env: {} });
  try {
    assert.match(agent.signaling.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const { token } = await agent.tokens.mint({ role: "view", ttlS: 60, subject: "tls" });
    const ws = new WebSocket(`${agent.signaling.url.replace("https", "wss")}/signal`, { ca: execFileSync("cat", [cert]) });
    const welcome = await new Promise<Record<string, unknown>>((resolve, reject) => {
      ws.once("open", () => ws.send(JSON.stringify({ type: "hello", v: 1, token })));
      ws.once("message", (d) => resolve(JSON.parse(String(d)) as Record<string, unknown>));
      ws.once("error", reject);
    });
    assert.equal(welcome.type, "welcome");
    ws.close();
    // A plain-text client cannot talk to it.
    const plain = await fetch(agent.signaling.url.replace("https", "http")).then(() => "answered", () => "refused");
    assert.equal(plain, "refused");
  } finally {
    await agent.close();
    cleanup();
  }
});

function capturingLogger(): { log: ReturnType<typeof createLogger>; lines: () => Record<string, unknown>[] } {
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return { log: createLogger({ level: "info", pretty: "never", destination: sink }), lines: () => chunks.join("").split("\n").filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) };
}

test("binding a non-loopback address without TLS logs a warning", async () => {
  const { config, cleanup } = testConfig({ server: { host: "0.0.0.0" } });
  config.log.level = "info";
  const { log, lines } = capturingLogger();
  const agent = await Agent.start({ config, log, env: {} });
  try {
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(lines().some((l) => l.level === 40 && String(l.msg).includes("without TLS")), JSON.stringify(lines()));
  } finally {
    await agent.close();
    cleanup();
  }
});

test("logs redact tokens and secrets wherever they appear in a logged object", async () => {
  const { log, lines } = capturingLogger();
  log.info({ token: "eyJ.secret.token", nested: { secret: "s3cr3t", password: "pw" }, headers: { authorization: "Bearer abc" }, restoreToken: "rt" }, "hello");
  log.flush();
  await new Promise((r) => setTimeout(r, 20));
  const text = JSON.stringify(lines());
  for (const s of ["eyJ.secret.token", "s3cr3t", "Bearer abc", '"pw"', '"rt"']) assert.ok(!text.includes(s), `${s} leaked: ${text}`);
  assert.ok(text.includes("[redacted]"));
});
