import { runRtcFuzz } from "../test/helpers/fuzz-rtc.js";

/**
 * The full fuzz run of issue 11: 100 000 fuzzed signaling messages (byte-flipped offers, mutated JSON,
 * loopback candidates, pings) against a streaming agent while a legitimate viewer streams and a
 * legitimate session pings. Prints RSS baseline / peak / after, fds, UDP sockets, ping p99 and the
 * viewer's longest gap. `npm run bench:fuzz [-- messages]`.
 */
const messages = Number(process.argv[2] ?? 100_000);
const f = await runRtcFuzz({ messages, perSession: 500, seed: 20261208, log: (s) => console.log(s) });
console.log(JSON.stringify(f, null, 2));
console.log(`RSS ${f.rssBaselineMb} -> peak ${f.rssPeakMb} -> after ${f.rssAfterMb} MB; heap ${f.heapBaselineMb} -> ${f.heapAfterMb} MB; fds ${f.fdsBefore} -> ${f.fdsAfter}; UDP ${f.udpBefore} -> ${f.udpAfter}; ping p99 ${f.pingP99Ms} ms (max ${f.pingMaxMs}); viewer gap max ${f.viewerMaxGapMs} ms; ${f.messages} messages in ${f.seconds} s`);
