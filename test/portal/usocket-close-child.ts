/**
 * Child process of usocket-guard.test.ts (run with --expose-gc): D-Bus connections opened and closed
 * on a real dbus-daemon, with a full garbage collection right after each socket is closed, i.e. inside
 * the window in which libuv is still closing the socket's handle.
 *   usocket-close-child.js <bus address> guarded    through PortalBus (which installs the guard)
 *   usocket-close-child.js <bus address> unguarded  plain dbus-next, no guard
 * Prints "survived <n>" and how many closed wrappers the guard still holds once the loop turned twice.
 */
import { createRequire } from "node:module";
import dbus from "dbus-next";
import { PortalBus } from "../../agent/portal/bus.js";
import { usocketWrapsClosing } from "../../agent/util/usocket-guard.js";
import { silentLogger } from "../../agent/log/logger.js";

const [address, mode] = process.argv.slice(2);
const CYCLES = 30;
const gc = (globalThis as { gc?: () => void }).gc;
if (address === undefined || (mode !== "guarded" && mode !== "unguarded") || gc === undefined) {
  console.error("usage: node --expose-gc usocket-close-child.js <bus address> guarded|unguarded");
  process.exit(2);
}

// The GC right after the close: wraps destroy() as it is when the first connection is made (after the
// guard, when PortalBus installed it), and tells the loop below that the socket is closed.
type Proto = { destroy: (...a: unknown[]) => unknown };
const proto = (createRequire(createRequire(import.meta.url).resolve("dbus-next"))("usocket") as { USocket: { prototype: Proto } })
  .USocket.prototype;
let destroyed: (() => void) | undefined;
let instrumented = false;
function gcAfterDestroy(): void {
  if (instrumented) return;
  instrumented = true;
  const destroy = proto.destroy;
  proto.destroy = function (this: unknown, ...a: unknown[]) {
    const r = destroy.apply(this, a);
    gc!();
    destroyed?.();
    return r;
  };
}

const turn = () => new Promise<void>((r) => setImmediate(r));
let closed = 0;
for (let i = 0; i < CYCLES; i++) {
  const gone = new Promise<void>((r) => (destroyed = r));
  if (mode === "guarded") {
    const bus = await PortalBus.connect({ busAddress: address, timeoutMs: 5000, log: silentLogger() });
    gcAfterDestroy();
    bus.disconnect();
  } else {
    gcAfterDestroy();
    const bus = dbus.sessionBus({ busAddress: address });
    bus.on("error", () => undefined);
    await new Promise<void>((r) => bus.once("connect", () => r()));
    bus.disconnect();
  }
  await gone; // the bus answered our shutdown: usocket destroyed the socket
  closed++;
  await turn();
}
await turn();
await turn();
console.log(`survived ${closed}`);
console.log(`closing ${usocketWrapsClosing()}`);
