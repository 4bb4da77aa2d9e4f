import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { SignJWT, base64url } from "jose";
import { startTestAgent, type TestAgent } from "../helpers/agent.js";
import { hello, TestClient } from "../helpers/ws-client.js";
import { CloseCode } from "../../agent/signaling/protocol.js";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";

let t: TestAgent;
let secret: Uint8Array;
const ed = generateKeyPairSync("ed25519");
const edOther = generateKeyPairSync("ed25519");
const keyDir = mkdtempSync(join(tmpdir(), "wl-keys-"));
const pubFile = join(keyDir, "ed.pub.pem");
writeFileSync(pubFile, ed.publicKey.export({ type: "spki", format: "pem" }));

before(async () => {
  // This file opens many connections from one address: lift the per-address limit (tested elsewhere).
  t = await startTestAgent({ auth: { public_keys: [pubFile] }, signaling: { connection_burst_per_address: 10_000, connections_per_second_per_address: 10_000 } });
  // The test signs some tokens itself with the agent's own secret, as a compromised-clock or
  // third-party issuer would.
  const { readFileSync } = await import("node:fs");
  secret = new Uint8Array(Buffer.from(readFileSync(t.config.auth.secret_file, "utf8").trim(), "utf8"));
});
after(async () => {
  await t.close();
  rmSync(keyDir, { recursive: true, force: true });
});

const now = () => Math.floor(Date.now() / 1000);

function signed(claims: Record<string, unknown>, key: Uint8Array | import("node:crypto").KeyObject = secret, alg = "HS256"): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg, typ: "JWT" }).sign(key);
}
const good = () => ({ sub: "alice", role: "control", aud: "wl-webrtc", iat: now(), exp: now() + 60, jti: `j${Math.random().toString(36).slice(2)}` });

async function expectRefused(token: string | undefined, reason: string): Promise<void> {
  const before = await failures(reason);
  const r = await hello(t.wsUrl, token);
  assert.equal(r.welcome, undefined, `expected a refusal (${reason}), got a welcome`);
  assert.equal(r.closed?.code, CloseCode.unauthorized);
  assert.equal(r.closed?.reason, `unauthorized: ${reason}`);
  assert.equal(await failures(reason), before + 1, `auth failure metric for ${reason}`);
}

async function failures(reason: string): Promise<number> {
  const m = await t.agent.metrics.authFailures.get();
  return m.values.find((v) => v.labels.reason === reason)?.value ?? 0;
}

test("a minted control token is accepted with role control", async () => {
  const { token } = await t.agent.tokens.mint({ role: "control", ttlS: 60, subject: "alice" });
  const r = await hello(t.wsUrl, token);
  assert.equal(r.welcome?.role, "control");
  assert.equal(r.welcome?.subject, "alice");
  assert.equal(typeof r.welcome?.session, "string");
  r.client.close();
});

test("a minted view token is accepted with role view", async () => {
  const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 60, subject: "bob" });
  const r = await hello(t.wsUrl, token);
  assert.equal(r.welcome?.role, "view");
  r.client.close();
});

test("no token", () => expectRefused(undefined, "missing"));
test("malformed token", () => expectRefused("not.a.jwt!", "malformed"));
test("garbage that looks like a JWT", () => expectRefused("aaaa.bbbb.cccc", "malformed"));
test("expired token", async () => expectRefused(await signed({ ...good(), iat: now() - 120, exp: now() - 60 }), "expired"));
test("not yet valid (nbf in the future)", async () => expectRefused(await signed({ ...good(), nbf: now() + 600 }), "not-yet-valid"));
test("issued in the future", async () => expectRefused(await signed({ ...good(), iat: now() + 600 }), "not-yet-valid"));
test("wrong signature", async () => expectRefused(await signed(good(), new Uint8Array(Buffer.from("x".repeat(48)))), "bad-signature"));
test("alg none", async () => {
  const header = base64url.encode(JSON.stringify({ alg: "none", typ: "JWT" }));
  const payload = base64url.encode(JSON.stringify(good()));
  await expectRefused(`${header}.${payload}.`, "bad-algorithm");
});
test("HS512 is not accepted", async () => expectRefused(await signed(good(), new Uint8Array(64).fill(7), "HS512"), "bad-algorithm"));
test("wrong audience", async () => expectRefused(await signed({ ...good(), aud: "someone-else" }), "wrong-audience"));
test("bad role claim", async () => expectRefused(await signed({ ...good(), role: "admin" }), "bad-claims"));
test("no exp claim", async () => {
  const c: Record<string, unknown> = good();
  delete c.exp;
  await expectRefused(await signed(c), "bad-claims");
});
test("lifetime longer than auth.max_ttl_s", async () => expectRefused(await signed({ ...good(), exp: now() + 10 * 86400 }), "ttl-too-long"));

test("revoked token", async () => {
  const { token, claims } = await t.agent.tokens.mint({ role: "control", ttlS: 60, subject: "carol" });
  const ok = await hello(t.wsUrl, token);
  assert.equal(ok.welcome?.role, "control");
  ok.client.close();
  t.agent.tokens.revocations.add(claims.jti);
  await expectRefused(token, "revoked");
});

test("EdDSA token from a configured public key is accepted; from another key refused", async () => {
  const accepted = await hello(t.wsUrl, await signed({ ...good(), role: "view" }, ed.privateKey, "EdDSA"));
  assert.equal(accepted.welcome?.role, "view");
  accepted.client.close();
  await expectRefused(await signed(good(), edOther.privateKey, "EdDSA"), "bad-signature");
});

test("the token may travel in the WebSocket subprotocol header instead of hello", async () => {
  const { token } = await t.agent.tokens.mint({ role: "view", ttlS: 60, subject: "dave" });
  const client = new TestClient(t.wsUrl, ["wl-webrtc.v1", `bearer.${token}`]);
  await client.opened;
  assert.equal(client.ws.protocol, "wl-webrtc.v1", "the agent selects its subprotocol, never echoes the token");
  client.send({ type: "hello", v: 1 });
  const w = await client.next("welcome");
  assert.equal(w.role, "view");
  client.close();
});

test("a token in the URL query is ignored", async () => {
  const { token } = await t.agent.tokens.mint({ role: "control", ttlS: 60, subject: "eve" });
  const client = new TestClient(`${t.wsUrl}?token=${token}`);
  await client.opened;
  client.send({ type: "hello", v: 1 });
  const closed = await client.closed;
  assert.equal(closed.code, CloseCode.unauthorized);
  assert.equal(closed.reason, "unauthorized: missing");
});

test("an unsupported protocol version is refused with its own code", async () => {
  const { token } = await t.agent.tokens.mint({ role: "control", ttlS: 60, subject: "frank" });
  const r = await hello(t.wsUrl, token, { v: 2 });
  assert.equal(r.closed?.code, CloseCode.unsupportedVersion);
});
