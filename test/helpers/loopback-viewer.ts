import { RTCPeerConnection, useFIR, useH264, useNACK, usePLI, useSdesMid, useTransportWideCC, useTWCC, type RtpPacket } from "werift";
import { hello, type TestClient } from "./ws-client.js";

/**
 * A werift viewer in this process whose ICE traffic never leaves 127.0.0.1: its sockets are bound to
 * 127.0.0.1, it signals only its 127.0.0.1 candidate, and it checks no pair whose remote is not on
 * 127.0.0.0/8. The agent checks that candidate from its own sockets (bound to all addresses, so their
 * source is 127.0.0.1); the viewer learns them as peer-reflexive candidates and nominates one of those.
 */
export interface LoopbackViewer {
  pc: RTCPeerConnection;
  ws: TestClient;
  /** RTP packets received, with their arrival time (performance.now()). */
  packets: { at: number; seq: number }[];
  close(): Promise<void>;
}

const isLoopback = (host: string): boolean => /^127\./.test(host);

export async function connectLoopbackViewer(wsUrl: string, token: string, timeoutMs = 15_000): Promise<LoopbackViewer> {
  const { client, welcome } = await hello(wsUrl, token);
  if (!welcome) throw new Error("no welcome");
  const pc = new RTCPeerConnection({ iceServers: [] /* werift defaults to a public STUN server */,
    codecs: { video: [useH264({ rtcpFeedback: [useNACK(), usePLI(), useFIR(), useTWCC()] })], audio: [] },
    headerExtensions: { video: [useSdesMid(), useTransportWideCC()], audio: [] },
    iceUseIpv6: false,
    bundlePolicy: "max-bundle",
    iceTcpPassive: false,
    iceInterfaceAddresses: { udp4: "127.0.0.1" },
    iceAdditionalHostAddresses: ["127.0.0.1"],
    iceFilterCandidatePair: (pair) => isLoopback(pair.remoteCandidate.host),
  });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.createDataChannel("control");
  const packets: LoopbackViewer["packets"] = [];
  pc.onIceCandidate.subscribe((c) => {
    const j = c?.toJSON();
    // Only the loopback candidate: werift also names the machine's interface addresses (on a socket bound to 127.0.0.1).
    if (j?.candidate && isLoopback(j.candidate.split(" ")[4] ?? "")) client.send({ type: "candidate", candidate: { candidate: j.candidate, sdpMid: j.sdpMid ?? null, sdpMLineIndex: j.sdpMLineIndex ?? null } });
  });
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  // The offer's own candidates, if any were gathered already, must be loopback too.
  const sdp = pc.localDescription!.sdp.split("\r\n").filter((l) => !l.startsWith("a=candidate:") || isLoopback(l.split(" ")[4] ?? "")).join("\r\n");
  client.send({ type: "offer", sdp });
  const answer = await client.next("answer", timeoutMs);
  // The agent's candidates are not needed (and not on loopback): its checks reach us as peer-reflexive ones.
  await pc.setRemoteDescription({ type: "answer", sdp: String(answer.sdp).split("\r\n").filter((l) => !l.startsWith("a=candidate:")).join("\r\n") });
  await pc.connectionStateChange.watch((s) => s === "connected", timeoutMs);
  pc.dtlsTransports[0]!.onRtp.subscribe((p: RtpPacket) => packets.push({ at: performance.now(), seq: p.header.sequenceNumber }));
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
