/**
 * Child process of usocket-guard.test.ts: usocket sockets ended or closed while their connect() still runs
 * in usocket's thread pool (a D-Bus connection given up while it is being made, as when the desktop's bus
 * goes away), against a unix server of its own.
 *   usocket-connect-child.js <socket path> guarded|unguarded
 * Prints "survived <n>" once every socket is closed.
 */
import { createServer } from "node:net";
import { createRequire } from "node:module";
import { guardUsocketClose } from "../../agent/util/usocket-guard.js";

const [path, mode] = process.argv.slice(2);
if (path === undefined || (mode !== "guarded" && mode !== "unguarded")) {
  console.error("usage: usocket-connect-child.js <socket path> guarded|unguarded");
  process.exit(2);
}
if (mode === "guarded" && !guardUsocketClose()) throw new Error("the guard did not install");
type Sock = { on(e: string, f: (...a: unknown[]) => void): void; end(): void; destroy(): void };
const { USocket } = createRequire(createRequire(import.meta.url).resolve("dbus-next"))("usocket") as { USocket: new (o: { path: string }) => Sock };

const server = createServer((c) => c.on("error", () => undefined));
await new Promise<void>((r) => server.listen(path, r));
const N = 40;
const closed: Promise<void>[] = [];
for (let i = 0; i < N; i++) {
  const s = new USocket({ path });
  s.on("error", () => undefined);
  closed.push(new Promise<void>((r) => s.on("close", () => r())));
  if (i % 2 === 0) s.end();
  else s.destroy();
}
// A destroyed socket emits no close of its own: give every connect time to complete, then count.
await Promise.race([Promise.all(closed), new Promise((r) => setTimeout(r, 1000))]);
console.log(`survived ${N}`);
server.close();
