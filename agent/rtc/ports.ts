import { UdpTransport } from "werift";

/**
 * UDP ports in `rtc.udp_port_min..udp_port_max` without a race.
 *
 * werift (0.25.2, common/src/network.ts `findPort`) picks a port of `icePortRange` by binding a probe
 * socket to each port in turn, closing it, and then binding its real socket to the first port the
 * probe got. Between the probe's close and the real bind another socket can take that port: a second
 * viewer gathering at the same moment (the stage creates peers concurrently), another interface of the
 * same viewer, a TURN client socket, or another process. The loser's bind then fails with EADDRINUSE on
 * a socket that has no 'error' listener yet: an uncaught exception in the agent, or a viewer that never
 * gathers.
 *
 * `rangedUdpBinds()` replaces that for every werift UDP socket given a port range: the real socket is
 * bound directly, port after port, until the kernel accepts one (a failed bind leaves a Node dgram
 * socket unbound, so it can try the next); nothing else can take a port between a check and the bind,
 * because there is no separate check. Ports are tried from a cursor that moves past the last one
 * handed out, so a port a viewer just released is not the next viewer's at once (late packets of the
 * old session would reach the new socket). When the whole range is taken it fails as werift's does
 * ("port not found"): werift then skips that interface, and `PeerSession` tells the viewer.
 *
 * Installed once per process (idempotent); sockets given an exact port or no range keep werift's own path.
 */
type RangedTransport = {
  socket: import("node:dgram").Socket;
  socketType: "udp4" | "udp6";
  options: { port?: number; portRange?: [number, number]; interfaceAddresses?: Partial<Record<"udp4" | "udp6", string>> };
};

let installed = false;
let cursor = 0;
/** Binds werift's own init would have done, and the ranged binds done here (for tests and metrics). */
export const rangedBindCounters = { binds: 0, inUse: 0, exhausted: 0 };

export function rangedUdpBinds(): void {
  if (installed) return;
  const proto = UdpTransport.prototype as unknown as { init(this: RangedTransport): Promise<void> };
  if (typeof proto.init !== "function") throw new Error("werift's UdpTransport has no init(): the UDP port range cannot be made race-free with this werift version");
  const original = proto.init;
  proto.init = async function (this: RangedTransport): Promise<void> {
    const range = this.options?.portRange;
    if (!range || this.options.port) return original.call(this);
    const [min, max] = range;
    const n = max - min + 1;
    const address = this.options.interfaceAddresses?.[this.socketType];
    const start = cursor;
    for (let k = 0; k < n; k++) {
      const port = min + ((start + k) % n);
      const err = await bindOnce(this.socket, port, address);
      if (!err) {
        cursor = (port - min + 1) % n;
        rangedBindCounters.binds++;
        return;
      }
      if (err.code !== "EADDRINUSE" && err.code !== "EACCES") throw err;
      rangedBindCounters.inUse++;
    }
    rangedBindCounters.exhausted++;
    throw new Error("port not found");
  };
  installed = true;
}

function bindOnce(socket: RangedTransport["socket"], port: number, address: string | undefined): Promise<NodeJS.ErrnoException | undefined> {
  return new Promise((resolve) => {
    const done = (err?: NodeJS.ErrnoException): void => {
      socket.off("error", done);
      socket.off("listening", ok);
      resolve(err);
    };
    const ok = (): void => done();
    socket.once("error", done);
    socket.once("listening", ok);
    try {
      socket.bind({ port, address });
    } catch (err) {
      done(err as NodeJS.ErrnoException);
    }
  });
}
