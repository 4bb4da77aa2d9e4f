import { test } from "node:test";
import assert from "node:assert/strict";
import { RTCPeerConnection, useH264, useSdesMid } from "werift";
import { parseConfig } from "../../agent/config/load.js";
import { ConfigError } from "../../agent/util/errors.js";
import { iceHostOptions } from "../../agent/rtc/peer.js";
import { hello } from "../helpers/ws-client.js";
import { startRtcAgent } from "./fixture.js";

/** `rtc.ice_host_addresses`: the agent offers host candidates on those addresses only, and says which key is wrong. */

test("rtc.ice_host_addresses takes IP literals only, and names the key", () => {
  assert.deepEqual(parseConfig({ rtc: { ice_host_addresses: ["127.0.0.1", "::1"] } }, "(t)").rtc.ice_host_addresses, ["127.0.0.1", "::1"]);
  for (const bad of ["eth0", "localhost", "127.0.0.256", "10.0.0.1/24"]) {
    assert.throws(() => parseConfig({ rtc: { ice_host_addresses: [bad] } }, "(t)"), (err: unknown) => err instanceof ConfigError && err.problems.some((p) => p.includes("rtc.ice_host_addresses")), bad);
  }
});

test("werift options: no interface scan, the given addresses only, one address per family binds there", () => {
  assert.deepEqual(iceHostOptions([]), {});
  assert.deepEqual(iceHostOptions(["127.0.0.1"]), { iceUseIpv4: false, iceUseIpv6: false, iceAdditionalHostAddresses: ["127.0.0.1"], iceInterfaceAddresses: { udp4: "127.0.0.1" } });
  assert.deepEqual(iceHostOptions(["10.1.0.1", "10.2.0.1", "::1"]).iceInterfaceAddresses, { udp6: "::1" });
});

test("the agent's answer and trickled candidates name only the configured address", async () => {
  const fx = await startRtcAgent({ rtc: { ice_host_addresses: ["127.0.0.1"] } });
  const { client, welcome } = await hello(fx.wsUrl, await fx.token("view"));
  assert.ok(welcome);
  const pc = new RTCPeerConnection({ iceServers: [] /* werift defaults to a public STUN server */, codecs: { video: [useH264()], audio: [] }, headerExtensions: { video: [useSdesMid()], audio: [] }, ...iceHostOptions(["127.0.0.1"]) });
  try {
    pc.addTransceiver("video", { direction: "recvonly" });
    await pc.setLocalDescription(await pc.createOffer());
    client.send({ type: "offer", sdp: pc.localDescription!.sdp });
    const answer = await client.next("answer", 15_000);
    const addrs: string[] = [...String(answer.sdp).matchAll(/^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ/gm)].map((m) => m[1]!);
    for (;;) {
      const m = await client.next("candidate", 10_000);
      const c = m.candidate as { candidate: string } | null;
      if (!c) break;
      addrs.push(c.candidate.split(" ")[4]!);
    }
    assert.ok(addrs.length > 0, "the agent offered host candidates");
    // No STUN server configured: none at all (werift would otherwise ask stun.l.google.com).
    const conn = (fx.agent.rtc!.viewers[0]!.peerConnection as unknown as { iceTransports: { connection: { stunServer: unknown } }[] }).iceTransports[0]!.connection;
    assert.equal(conn.stunServer, undefined, "no STUN server when rtc.stun_servers is empty");
    assert.deepEqual([...new Set(addrs)], ["127.0.0.1"], `candidates: ${addrs.join(" ")}`);
  } finally {
    await pc.close();
    client.ws.close();
    await fx.close();
  }
});
