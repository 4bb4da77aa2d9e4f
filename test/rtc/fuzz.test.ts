import { test } from "node:test";
import assert from "node:assert/strict";
import { runRtcFuzz } from "../helpers/fuzz-rtc.js";
import { runRenegoFuzz } from "../helpers/fuzz-renego.js";

/**
 * 20 000 fuzzed signaling messages (byte-flipped and layout-changing offers, mutated JSON, loopback
 * candidates, pings) against a streaming agent, while a legitimate viewer streams and a legitimate
 * session pings. The full 100 000 is `npm run bench:fuzz`. All ICE traffic stays on 127.0.0.1.
 */
test("20 000 fuzzed messages against a streaming agent: memory back near its baseline, no socket left, the legit viewer streams throughout", async () => {
  const f = await runRtcFuzz({ messages: 20_000, perSession: 500, seed: 20261208 });
  console.log(`# RSS ${f.rssBaselineMb} -> peak ${f.rssPeakMb} -> after ${f.rssAfterMb} MB; heap ${f.heapBaselineMb} -> ${f.heapAfterMb} MB; fds ${f.fdsBefore} -> ${f.fdsAfter}; UDP sockets ${f.udpBefore} -> ${f.udpAfter}; legit ping p99 ${f.pingP99Ms} ms (max ${f.pingMaxMs}, ${f.pings} pings); viewer: ${f.viewerPackets} packets, longest gap ${f.viewerMaxGapMs} ms; ${f.messages} messages on ${f.sessions} sessions in ${f.seconds} s`);
  console.log(`# replies ${JSON.stringify(f.replies)}`);
  assert.deepEqual(f.internal, [], "no offer answered internal (the protocol keeps it for bugs)");
  assert.equal(f.viewersLeft, 1, "only the legit viewer is left");
  assert.equal(f.udpAfter, f.udpBefore, "UDP sockets left by fuzzed offers");
  assert.ok(f.fdsAfter <= f.fdsBefore + 2, `fds ${f.fdsBefore} -> ${f.fdsAfter}`);
  // After a full GC the JS heap is back within a few MB of the baseline; RSS keeps some of what the
  // allocator got during the run (freed, not returned to the system). The bound: 20 MB of heap, 60 MB of
  // RSS (the run's own peak is ~30 MB above the baseline; a leak of the refused offers' werift objects
  // grows both without bound: issue 11 saw +232 MB of RSS after 100 000 messages).
  assert.ok(f.heapAfterMb - f.heapBaselineMb < 20, `heap ${f.heapBaselineMb} -> ${f.heapAfterMb} MB`);
  assert.ok(f.rssAfterMb - f.rssBaselineMb < 60, `RSS ${f.rssBaselineMb} -> ${f.rssAfterMb} MB`);
  // The legit viewer kept getting frames (the source sends ~20 packets a second at its lowest) and the
  // legit session its pongs.
  assert.ok(f.viewerMaxGapMs < 2000, `the legit viewer waited ${f.viewerMaxGapMs} ms for a packet`);
  assert.ok(f.pingP99Ms < 500, `legit ping p99 ${f.pingP99Ms} ms`);
});

/**
 * A hostile token holder's offers: 400 sessions, 24 at a time, each sending a valid first offer twice
 * (racing first offers), then 20 offers at once that change the layout (BUNDLE dropped or changed, mids
 * renamed, m-sections added, new ICE credentials), some byte-flipped, and loopback candidates, then
 * leaving. werift made new DTLS/ICE transports for such offers and forgot the old ones, and racing first
 * offers left a PeerSession nobody owned: their buffers stayed reachable (issue 11: RSS 125 -> 460 MB).
 * Measured 12 s after the run with full GCs: the JS heap and the external buffers are back near the
 * baseline. All candidates name 127.0.0.1.
 */
test("400 hostile sessions of racing and layout-changing offers: JS heap, buffers and RSS back near the baseline, no socket or viewer left", async () => {
  const f = await runRenegoFuzz({ sessions: 400, concurrency: 24, offersPerSession: 20, seed: 20261208 });
  console.log(`# RSS ${f.rssBaselineMb} -> peak ${f.rssPeakMb} -> after ${f.rssAfterMb} MB; heap used ${f.heapBaselineMb} -> peak ${f.heapPeakMb} -> after ${f.heapAfterMb} MB; heap total ${f.baseline.heapTotalMb} -> ${f.after.heapTotalMb} MB; array buffers ${f.baseline.arrayBuffersMb} -> ${f.after.arrayBuffersMb} MB; UDP sockets ${f.udpBefore} -> peak ${f.udpPeak} -> ${f.udpAfter}; legit ping p99 ${f.pingP99Ms} ms (max ${f.pingMaxMs}); ${f.messages} messages on ${f.sessions} sessions in ${f.seconds} s`);
  console.log(`# replies ${JSON.stringify(f.replies)}`);
  assert.equal(f.viewersAfter, 0, "viewers left by hostile sessions");
  assert.equal(f.udpAfter, f.udpBefore, "UDP sockets left by hostile sessions");
  // Before the fix: heap used +30 to +57 MB and array buffers +43 MB after the GCs (what the forgotten
  // transports and the unowned PeerSessions held); after it, +1 to +7 MB and 0 to +7 MB.
  assert.ok(f.heapAfterMb - f.heapBaselineMb < 15, `heap used ${f.heapBaselineMb} -> ${f.heapAfterMb} MB after the run and full GCs`);
  assert.ok(f.after.arrayBuffersMb - f.baseline.arrayBuffersMb < 15, `array buffers ${f.baseline.arrayBuffersMb} -> ${f.after.arrayBuffersMb} MB after the run and full GCs`);
  // RSS 12 s after: the old code kept +150 to +185 MB. With the leak fixed, glibc still kept what the
  // released viewers freed (+93 to +181 MB); trimmed after releases (agent/rtc/trim.ts): +68 to +87 MB,
  // mostly anonymous maps the V8 heap gave back later (its own heap total is below its baseline).
  assert.ok(f.rssAfterMb - f.rssBaselineMb < 130, `RSS ${f.rssBaselineMb} -> peak ${f.rssPeakMb} -> ${f.rssAfterMb} MB 12 s after the run`);
});
