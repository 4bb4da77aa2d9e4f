import { test } from "node:test";
import assert from "node:assert/strict";
import { RTCPeerConnection, useH264 } from "werift";
import { startTestAgent } from "../helpers/agent.js";
import { hello, withTimeout } from "../helpers/ws-client.js";
import { startRtcAgent } from "../rtc/fixture.js";
import { RevocationList } from "../../agent/auth/revocation.js";
import { CloseCode } from "../../agent/signaling/protocol.js";

/**
 * A session lives as long as its token: revoking the token (the revocation file, as `wl-webrtc revoke`
 * writes it from another process) or its expiry ends the session, and a fresh token presented on the open
 * connection continues it.
 */

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("revoking a live session's token ends it within a second (4401 unauthorized: revoked); other sessions go on", async (tc) => {
  const t = await startTestAgent();
  try {
    const victim = await t.agent.tokens.mint({ role: "control", ttlS: 600, subject: "mallory" });
    const other = await t.agent.tokens.mint({ role: "control", ttlS: 600, subject: "alice" });
    const v = await hello(t.wsUrl, victim.token);
    const o = await hello(t.wsUrl, other.token);
    assert.ok(v.welcome && o.welcome);
    // What `wl-webrtc revoke JTI` does, in its own process: append to the file. The agent is not told.
    const start = Date.now();
    new RevocationList(t.config.auth.revocation_file).add(victim.claims.jti);
    const closed = await withTimeout(v.client.closed, 1500, "the revoked session is closed");
    assert.equal(closed.code, CloseCode.unauthorized);
    assert.equal(closed.reason, "unauthorized: revoked");
    const ms = Date.now() - start;
    tc.diagnostic(`session closed ${ms} ms after the revocation file changed`);
    o.client.send({ type: "ping", id: 1 });
    assert.equal((await o.client.next("pong")).id, 1, "another token's session goes on");
    assert.equal(t.agent.signaling.registry.size, 1);
    o.client.close();
    assert.ok(t.agent.tokens.revocations.watching);
    await t.agent.close();
    assert.equal(t.agent.tokens.revocations.watching, false, "the revocation file is no longer polled after close");
  } finally {
    await t.close();
  }
});

test("revocation also closes that viewer's peer connection", async () => {
  const fx = await startRtcAgent();
  const pc = new RTCPeerConnection({ iceServers: [] /* werift defaults to a public STUN server */, codecs: { video: [useH264()], audio: [] }, iceUseIpv6: false, bundlePolicy: "max-bundle", iceTcpPassive: false });
  try {
    const { token, claims } = await fx.agent.tokens.mint({ role: "view", ttlS: 600, subject: "viewer" });
    const v = await hello(fx.wsUrl, token);
    assert.ok(v.welcome);
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.createDataChannel("control");
    await pc.setLocalDescription(await pc.createOffer());
    // No candidates leave this process, and the answer is never applied: the agent makes the viewer's peer
    // connection and answers, and no packet goes anywhere (the test needs the peer, not a path).
    const sdp = pc.localDescription!.sdp.split("\r\n").filter((l) => !l.startsWith("a=candidate") && !l.startsWith("a=end-of-candidates")).join("\r\n");
    v.client.send({ type: "offer", sdp });
    await v.client.next("answer", 15_000);
    const rtc = fx.agent.rtc!;
    assert.equal(rtc.viewers.length, 1);
    const peer = rtc.viewers[0]!;
    new RevocationList(fx.config.auth.revocation_file).add(claims.jti);
    const closed = await withTimeout(v.client.closed, 1500, "the revoked viewer's session is closed");
    assert.equal(closed.reason, "unauthorized: revoked");
    assert.ok(peer.closed, "its peer connection is closed with it");
    assert.equal(rtc.viewers.length, 0);
  } finally {
    await pc.close();
    await fx.close();
  }
});

test("a session ends when its token expires (4401 unauthorized: expired)", async () => {
  const t = await startTestAgent({ auth: { clock_tolerance_s: 0 } });
  try {
    const { token, claims } = await t.agent.tokens.mint({ role: "view", ttlS: 2, subject: "brief" });
    const r = await hello(t.wsUrl, token);
    assert.equal(r.welcome?.expiresAt, claims.exp);
    const closed = await withTimeout(r.client.closed, 4000, "closed at expiry");
    const at = Date.now();
    assert.equal(closed.code, CloseCode.unauthorized);
    assert.equal(closed.reason, "unauthorized: expired");
    assert.ok(at >= claims.exp * 1000 - 50, `closed ${claims.exp * 1000 - at} ms before exp`);
    assert.equal(t.agent.signaling.registry.size, 0);
  } finally {
    await t.close();
  }
});

test("a fresh token on the open connection continues the session past the first token's expiry", async () => {
  const t = await startTestAgent({ auth: { clock_tolerance_s: 0 } });
  try {
    const first = await t.agent.tokens.mint({ role: "control", ttlS: 2, subject: "carol" });
    const r = await hello(t.wsUrl, first.token);
    assert.ok(r.welcome);
    const fresh = await t.agent.tokens.mint({ role: "control", ttlS: 60, subject: "carol" });
    r.client.send({ type: "token", id: 5, token: fresh.token });
    const renewed = await r.client.next("renewed");
    assert.equal(renewed.id, 5);
    assert.equal(renewed.expiresAt, fresh.claims.exp);
    assert.equal(renewed.role, "control");
    await sleep(first.claims.exp * 1000 - Date.now() + 1000);
    r.client.send({ type: "ping", id: 6 });
    assert.equal((await r.client.next("pong")).id, 6, "alive after the first token's expiry");
    // The session now answers for both tokens: revoking the first one still ends it.
    new RevocationList(t.config.auth.revocation_file).add(first.claims.jti);
    const closed = await withTimeout(r.client.closed, 1500, "revoking the first token ends the renewed session");
    assert.equal(closed.reason, "unauthorized: revoked");
  } finally {
    await t.close();
  }
});

test("a token refresh must keep the subject and may not raise the role; a refused one leaves the session as it was", async () => {
  const t = await startTestAgent();
  try {
    const ctl = await t.agent.tokens.mint({ role: "control", ttlS: 60, subject: "dave" });
    const r = await hello(t.wsUrl, ctl.token);
    assert.equal(r.welcome?.role, "control");
    const expect = async (token: string, pattern: RegExp): Promise<void> => {
      r.client.send({ type: "token", token });
      const e = await r.client.next("error");
      assert.equal(e.code, "forbidden");
      assert.equal(e.ref, "token");
      assert.match(String(e.message), pattern);
    };
    await expect((await t.agent.tokens.mint({ role: "control", ttlS: 60, subject: "eve" })).token, /subject/);
    await expect((await t.agent.tokens.mint({ role: "view", ttlS: 60, subject: "dave" })).token, /role/);
    await expect("not.a.jwt", /token refused: malformed/);
    const revoked = await t.agent.tokens.mint({ role: "control", ttlS: 60, subject: "dave" });
    t.agent.tokens.revocations.add(revoked.claims.jti);
    await expect(revoked.token, /token refused: revoked/);
    r.client.send({ type: "ping", id: 1 });
    assert.equal((await r.client.next("pong")).id, 1, "still open after refused refreshes");

    // A view session given a control token stays view: the role never changes on an open connection.
    const view = await hello(t.wsUrl, (await t.agent.tokens.mint({ role: "view", ttlS: 60, subject: "dave" })).token);
    view.client.send({ type: "token", token: (await t.agent.tokens.mint({ role: "control", ttlS: 120, subject: "dave" })).token });
    assert.equal((await view.client.next("renewed")).role, "view");
    assert.equal(t.agent.signaling.registry.list().find((s) => s.role === "view")?.role, "view");

    // A token message before welcome is not a hello.
    const early = await hello(t.wsUrl, undefined, { type: "token", token: ctl.token });
    assert.equal(early.closed?.code, CloseCode.badMessage);
    r.client.close();
    view.client.close();
  } finally {
    await t.close();
  }
});
