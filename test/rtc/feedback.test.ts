import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  GenericNack, PictureLossIndication, RTCPeerConnection, RtcpPayloadSpecificFeedback, RtcpTransportLayerFeedback,
  useH264, useFIR, useNACK, usePLI, useTWCC, useTransportWideCC, useSdesMid,
  type RtcpPacket, type RtpPacket,
} from "werift";
import { hello, type TestClient } from "../helpers/ws-client.js";
import { startRtcAgent, type RtcFixture } from "./fixture.js";
import { iceHostOptions } from "../../agent/rtc/peer.js";

/**
 * RTCP feedback against a real werift viewer in this process: it can send exactly the PLI, FIR and NACK
 * a test needs (a browser only sends them when it sees loss), and see every packet that arrives.
 */
let fx: RtcFixture;
before(async () => {
  // A higher rate so that 128 packets (werift's own NACK history) is well under a second.
  fx = await startRtcAgent({}, { bitrateKbps: 4000 });
});
after(async () => {
  await fx?.close();
});

interface Viewer {
  pc: RTCPeerConnection;
  ws: TestClient;
  packets: RtpPacket[];
  close(): Promise<void>;
}

async function connectViewer(): Promise<Viewer> {
  const { client, welcome } = await hello(fx.wsUrl, await fx.token("view"));
  assert.ok(welcome, "welcome");
  const pc = new RTCPeerConnection({ iceServers: [] /* werift defaults to a public STUN server */,
    codecs: { video: [useH264({ rtcpFeedback: [useNACK(), usePLI(), useFIR(), useTWCC()] })], audio: [] },
    headerExtensions: { video: [useSdesMid(), useTransportWideCC()], audio: [] },
    ...iceHostOptions(["127.0.0.1"]),
    bundlePolicy: "max-bundle",
    iceTcpPassive: false,
  });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.createDataChannel("control");
  const packets: RtpPacket[] = [];
  pc.onIceCandidate.subscribe((c) => {
    if (c) client.send({ type: "candidate", candidate: { candidate: c.toJSON().candidate ?? "", sdpMid: c.toJSON().sdpMid ?? null, sdpMLineIndex: c.toJSON().sdpMLineIndex ?? null } });
  });
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  client.send({ type: "offer", sdp: pc.localDescription!.sdp });
  const answer = await client.next("answer", 15_000);
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp as string });
  // Trickled candidates from the agent (the test client's own queue would hold them until asked).
  client.ws.on("message", (data) => {
    const m = JSON.parse(String(data)) as { type: string; candidate?: { candidate: string; sdpMid?: string; sdpMLineIndex?: number } | null };
    if (m.type === "candidate" && m.candidate) void pc.addIceCandidate(m.candidate).catch(() => undefined);
  });
  await pc.connectionStateChange.watch((s) => s === "connected", 15_000);
  pc.dtlsTransports[0]!.onRtp.subscribe((p) => packets.push(p));
  return {
    pc,
    ws: client,
    packets,
    close: async () => {
      client.close();
      await pc.close();
    },
  };
}

async function until(what: string, fn: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const send = (v: Viewer, p: RtcpPacket | { serialize(): Buffer }): Promise<number | undefined> => v.pc.dtlsTransports[0]!.sendRtcp([p as RtcpPacket]);

/** A FIR (RFC 5104 4.3.1) built by hand: werift does not export its FIR class. */
function fir(senderSsrc: number, mediaSsrc: number, seq: number): { serialize(): Buffer } {
  const b = Buffer.alloc(20);
  b[0] = 0x80 | 4; // V=2, FMT=4
  b[1] = 206;
  b.writeUInt16BE(4, 2);
  b.writeUInt32BE(senderSsrc, 4);
  b.writeUInt32BE(0, 8);
  b.writeUInt32BE(mediaSsrc, 12);
  b[16] = seq;
  return { serialize: () => b };
}

test("PLI and FIR each become a keyframe request; a flood of them is merged", async () => {
  const v = await connectViewer();
  try {
    await until("media arrives", () => v.packets.length > 50);
    const mediaSsrc = v.packets[v.packets.length - 1]!.header.ssrc;
    const src = fx.source();
    const peer = fx.agent.rtc!.viewers[0]!;
    // Let the new-viewer request's rate-limit window pass, so each request below is forwarded as itself.
    await new Promise((r) => setTimeout(r, 1200));
    const n0 = src.keyframeRequests.length;
    await send(v, new RtcpPayloadSpecificFeedback({ feedback: new PictureLossIndication({ senderSsrc: 1, mediaSsrc }) }));
    await until("PLI forwarded", () => src.keyframeRequests.slice(n0).includes("pli"));
    assert.equal(peer.counters.plis, 1);
    await new Promise((r) => setTimeout(r, 1200));
    const n1 = src.keyframeRequests.length;
    await send(v, fir(1, mediaSsrc, 1));
    await until("FIR forwarded", () => src.keyframeRequests.slice(n1).includes("fir"));
    assert.equal(peer.counters.firs, 1);

    // A lossy viewer asking 30 times in 1.5 s gets at most two keyframes (rt: 1 per keyframe_min_interval_ms).
    const n2 = src.keyframeRequests.length;
    for (let i = 0; i < 30; i++) {
      await send(v, new RtcpPayloadSpecificFeedback({ feedback: new PictureLossIndication({ senderSsrc: 1, mediaSsrc }) }));
      await new Promise((r) => setTimeout(r, 50));
    }
    await new Promise((r) => setTimeout(r, 1100));
    const forwarded = src.keyframeRequests.length - n2;
    assert.ok(peer.counters.plis >= 31);
    assert.ok(forwarded >= 1 && forwarded <= 3, `30 PLIs in 1.5 s -> ${forwarded} keyframe requests`);
  } finally {
    await v.close();
  }
});

test("NACK for a packet older than werift's 128-packet history is answered from ours", async () => {
  const v = await connectViewer();
  try {
    await until("400 packets", () => v.packets.length > 400, 20_000);
    const last = v.packets[v.packets.length - 1]!;
    const old = v.packets[v.packets.length - 300]!;
    const oldSeq = old.header.sequenceNumber;
    const age = (last.header.sequenceNumber - oldSeq) & 0xffff;
    assert.ok(age >= 250, `the NACKed packet is ${age} packets old`);
    const before = v.packets.length;
    await send(v, new RtcpTransportLayerFeedback({ feedback: new GenericNack({ senderSsrc: 1, mediaSourceSsrc: last.header.ssrc, lost: [oldSeq] }) }));
    await until("retransmission", () => v.packets.slice(before).some((p) => p.header.sequenceNumber === oldSeq), 3000);
    const again = v.packets.slice(before).find((p) => p.header.sequenceNumber === oldSeq)!;
    assert.deepEqual(again.payload, old.payload, "the same payload");
    assert.equal(again.header.timestamp, old.header.timestamp);
    const peer = fx.agent.rtc!.viewers.find((p) => p.counters.packetsRetransmitted > 0);
    assert.ok(peer, "counted as our retransmission");
  } finally {
    await v.close();
  }
});
