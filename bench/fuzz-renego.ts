import { runRenegoFuzz } from "../test/helpers/fuzz-renego.js";

/**
 * Hostile offers (test/helpers/fuzz-renego.ts): `npm run bench:fuzz-renego [-- sessions concurrency offers]`.
 * Prints RSS, heap and buffers (baseline, peak, 12 s after with full GCs), RSS by mapping, UDP sockets
 * and a legit session's ping p99.
 */
const [sessions = 400, concurrency = 24, offers = 20] = process.argv.slice(2).map(Number);
const f = await runRenegoFuzz({ sessions, concurrency, offersPerSession: offers, seed: 20261208, log: (s) => console.log(s) });
console.log(JSON.stringify(f, null, 2));
const holdS = Number(process.env.HOLD_S ?? 0);
if (holdS > 0) {
  // For an outside look at the process (gdb, /proc) once the agent is closed.
  console.log(`pid ${process.pid}: holding ${holdS} s, RSS ${Math.round(process.memoryUsage().rss / 2 ** 20)} MB`);
  await new Promise((r) => setTimeout(r, holdS * 1000));
  console.log(`RSS ${Math.round(process.memoryUsage().rss / 2 ** 20)} MB`);
}
