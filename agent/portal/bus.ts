/**
 * A thin layer over dbus-next for talking to xdg-desktop-portal: one connection with UNIX fd passing,
 * calls with a deadline, match rules, and the portal's Request/Response pattern done the way the spec
 * asks (handle_token, request path computed from our unique name, subscribed before the call).
 *
 * Why not dbus-next's proxy objects: the Request object does not exist until the method has been
 * called, and the Response can arrive before a proxy could be built, so we listen on the low-level
 * message stream. Proxies also introspect every object (an extra round trip per call).
 */
import { closeSync } from "node:fs";
import { randomBytes } from "node:crypto";
import * as dbus from "dbus-next";
import type { Logger } from "../log/logger.js";
import { errorMessage } from "../util/errors.js";
import { PortalCancelledError, PortalFailedError, PortalTimeoutError, PortalUnavailableError } from "./errors.js";
import { guardUsocketClose } from "../util/usocket-guard.js";

export const PORTAL_BUS_NAME = "org.freedesktop.portal.Desktop";
export const PORTAL_OBJECT_PATH = "/org/freedesktop/portal/desktop";
const DBUS_NAME = "org.freedesktop.DBus";
const DBUS_PATH = "/org/freedesktop/DBus";

export type Variant = dbus.Variant;
export const Variant = dbus.Variant;
export type VardictIn = Record<string, dbus.Variant>;
/** a{sv} as dbus-next decodes it: every value is a Variant. */
export type Vardict = Record<string, dbus.Variant | undefined>;

/** What dbus-next really has at run time but its bundled types leave out. */
interface BusInternals {
  name: string | null;
  _connection: { on(event: "end" | "error", l: (...a: unknown[]) => void): void; stream: { fd?: number } };
}

export interface CallSpec {
  path: string;
  iface: string;
  member: string;
  signature?: string;
  body?: unknown[];
  destination?: string;
}

/** D-Bus error names that mean "nobody owns that name and nothing can be activated for it". */
const NO_SERVICE_ERRORS = new Set([
  "org.freedesktop.DBus.Error.ServiceUnknown",
  "org.freedesktop.DBus.Error.NameHasNoOwner",
  "org.freedesktop.DBus.Error.Spawn.ExecFailed",
  "org.freedesktop.DBus.Error.Spawn.ChildExited",
  "org.freedesktop.DBus.Error.Spawn.ChildSignaled",
  "org.freedesktop.DBus.Error.Spawn.Failed",
  "org.freedesktop.DBus.Error.Spawn.ServiceNotFound",
]);

export function dbusErrorName(err: unknown): string | undefined {
  return err instanceof dbus.DBusError ? err.type : undefined;
}

let tokenCounter = 0;

export class PortalBus {
  readonly #bus: dbus.MessageBus;
  readonly #log: Logger;
  readonly uniqueName: string;
  readonly address: string;
  /** Rejecters of calls in flight: all fail at once when the connection goes away. */
  readonly #pending = new Set<(err: Error) => void>();
  readonly #lostListeners = new Set<(reason: string) => void>();
  #lost: string | undefined;
  #disconnected = false;

  private constructor(bus: dbus.MessageBus, uniqueName: string, address: string, log: Logger) {
    this.#bus = bus;
    this.uniqueName = uniqueName;
    this.address = address;
    this.#log = log;
    bus.on("error", (err: unknown) => this.#onLost(`D-Bus connection error: ${errorMessage(err)}`));
    (bus as unknown as BusInternals)._connection.on("end", () => this.#onLost("the D-Bus connection was closed by the bus"));
  }

  /**
   * Connects (with UNIX fd passing negotiated) and waits for the bus's Hello reply.
   * @throws PortalUnavailableError when there is no bus at that address.
   */
  static async connect(opts: { busAddress?: string; timeoutMs: number; log: Logger }): Promise<PortalBus> {
    const address = opts.busAddress ?? process.env.DBUS_SESSION_BUS_ADDRESS;
    if (address === undefined || address === "") {
      throw new PortalUnavailableError(
        "No D-Bus session bus: DBUS_SESSION_BUS_ADDRESS is not set and no bus address was given. Run the agent inside the user's desktop session (or give it the bus address of its own headless desktop).",
      );
    }
    let bus: dbus.MessageBus;
    guardUsocketClose(); // usocket frees a closing socket's libuv handle too early (util/usocket-guard.ts)
    try {
      // negotiateUnixFd is accepted at run time but missing from dbus-next's bundled types.
      bus = dbus.sessionBus({ busAddress: address, negotiateUnixFd: true } as dbus.SessionBusOptions);
    } catch (err) {
      throw new PortalUnavailableError(`Cannot use the D-Bus address "${address}": ${errorMessage(err)}`, { cause: err });
    }
    try {
      const name = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no answer from the bus within ${opts.timeoutMs} ms`)), opts.timeoutMs);
        bus.once("connect", () => {
          clearTimeout(timer);
          const n = (bus as unknown as BusInternals).name;
          if (n) resolve(n);
          else reject(new Error("the bus did not give us a unique name"));
        });
        bus.once("error", (err: unknown) => {
          clearTimeout(timer);
          reject(err instanceof Error ? err : new Error(String(err)));
        });
      });
      // An fd in a reply is only ever delivered when usocket is in use and the bus agreed to pass fds.
      const stream = (bus as unknown as { _connection: { stream: { supportsUnixFd?: boolean } } })._connection.stream;
      if (stream.supportsUnixFd !== true) {
        bus.on("error", () => undefined);
        bus.disconnect();
        throw new PortalUnavailableError(
          `The D-Bus connection to ${address} cannot pass file descriptors, so the portal cannot hand over its PipeWire socket. dbus-next needs the native "usocket" module (usocket@^1.1.0) built for this Node.js: run "npm rebuild usocket".`,
        );
      }
      return new PortalBus(bus, name, address, opts.log);
    } catch (err) {
      if (err instanceof PortalUnavailableError) throw err;
      // Keep a late socket error from becoming an unhandled 'error' event.
      bus.on("error", () => undefined);
      try {
        bus.disconnect();
      } catch {
        // The stream may never have opened.
      }
      throw new PortalUnavailableError(
        `Cannot connect to the D-Bus session bus at ${address}: ${errorMessage(err)}. Is the desktop session (or the agent's headless desktop) running?`,
        { cause: err },
      );
    }
  }

  get lost(): string | undefined {
    return this.#lost;
  }

  /** Called once, with a reason, when the connection to the bus goes away while we still use it. */
  onLost(listener: (reason: string) => void): () => void {
    this.#lostListeners.add(listener);
    return () => this.#lostListeners.delete(listener);
  }

  #onLost(reason: string): void {
    if (this.#lost !== undefined) return;
    this.#lost = reason;
    if (this.#disconnected) return;
    this.#log.warn({ reason }, "portal: D-Bus connection lost");
    for (const reject of [...this.#pending]) reject(new PortalUnavailableError(`Lost the D-Bus session bus: ${reason}`));
    for (const l of [...this.#lostListeners]) l(reason);
  }

  /**
   * A method call with a deadline. Error replies reject with dbus-next's DBusError (callers map them).
   * A reply that comes after the deadline is dropped, and any fds in it are closed so they do not leak.
   */
  call(spec: CallSpec, timeoutMs: number): Promise<dbus.Message> {
    if (this.#lost !== undefined) return Promise.reject(new PortalUnavailableError(`Lost the D-Bus session bus: ${this.#lost}`));
    if (this.#disconnected) return Promise.reject(new PortalUnavailableError("The portal connection is closed"));
    const msg = new dbus.Message({
      destination: spec.destination ?? PORTAL_BUS_NAME,
      path: spec.path,
      interface: spec.iface,
      member: spec.member,
      signature: spec.signature ?? "",
      body: spec.body ?? [],
    });
    return new Promise<dbus.Message>((resolve, reject) => {
      let settled = false;
      const finish = () => {
        settled = true;
        clearTimeout(timer);
        this.#pending.delete(fail);
      };
      const fail = (err: Error) => {
        if (settled) return;
        finish();
        reject(err);
      };
      const timer = setTimeout(
        () => fail(new PortalTimeoutError(`${spec.iface}.${spec.member}`, `${shortIface(spec.iface)}.${spec.member} got no answer within ${timeoutMs} ms; is ${spec.destination ?? PORTAL_BUS_NAME} hung?`)),
        timeoutMs,
      );
      this.#pending.add(fail);
      this.#bus.call(msg).then(
        (reply) => {
          if (settled) {
            if (reply) closeReplyFds(reply);
            return;
          }
          finish();
          if (reply) resolve(reply);
          else reject(new Error(`${spec.member}: no reply`));
        },
        (err: unknown) => fail(err instanceof Error ? err : new Error(String(err))),
      );
    });
  }

  /** A call we do not wait for (Request.Close on a timed-out request, Session.Close while going away). */
  send(spec: CallSpec): void {
    if (this.#lost !== undefined || this.#disconnected) return;
    try {
      this.#bus.send(
        new dbus.Message({
          destination: spec.destination ?? PORTAL_BUS_NAME,
          path: spec.path,
          interface: spec.iface,
          member: spec.member,
          signature: spec.signature ?? "",
          body: spec.body ?? [],
          flags: dbus.MessageFlag.NO_REPLY_EXPECTED,
        }),
      );
    } catch (err) {
      this.#log.debug({ err: errorMessage(err) }, "portal: could not send");
    }
  }

  /**
   * Reads one property of the portal object.
   * @returns undefined when the portal does not have that interface (or property).
   * @throws PortalUnavailableError when no portal is on the bus.
   */
  async getProperty(iface: string, name: string, timeoutMs: number): Promise<unknown> {
    try {
      const reply = await this.call(
        { path: PORTAL_OBJECT_PATH, iface: "org.freedesktop.DBus.Properties", member: "Get", signature: "ss", body: [iface, name] },
        timeoutMs,
      );
      const v = reply.body[0] as dbus.Variant | undefined;
      return v?.value;
    } catch (err) {
      const n = dbusErrorName(err);
      if (n !== undefined && NO_SERVICE_ERRORS.has(n)) {
        throw new PortalUnavailableError(
          `xdg-desktop-portal is not available on the session bus (${this.address}): ${(err as dbus.DBusError).text || n}. Install and start xdg-desktop-portal and a backend for this compositor (xdg-desktop-portal-wlr for sway and other wlroots compositors, -gnome for GNOME, -kde for Plasma).`,
          { cause: err },
        );
      }
      if (
        n === "org.freedesktop.DBus.Error.InvalidArgs" ||
        n === "org.freedesktop.DBus.Error.UnknownInterface" ||
        n === "org.freedesktop.DBus.Error.UnknownProperty" ||
        n === "org.freedesktop.DBus.Error.UnknownObject" ||
        n === "org.freedesktop.DBus.Error.UnknownMethod"
      ) {
        return undefined;
      }
      throw err;
    }
  }

  async addMatch(rule: string, timeoutMs: number): Promise<void> {
    await this.call({ destination: DBUS_NAME, path: DBUS_PATH, iface: DBUS_NAME, member: "AddMatch", signature: "s", body: [rule] }, timeoutMs);
  }

  /** Best effort: the rule dies with the connection anyway. */
  removeMatch(rule: string): void {
    this.send({ destination: DBUS_NAME, path: DBUS_PATH, iface: DBUS_NAME, member: "RemoveMatch", signature: "s", body: [rule] });
  }

  /** Unique name of the current owner of a well-known name, or undefined. */
  async nameOwner(name: string, timeoutMs: number): Promise<string | undefined> {
    try {
      const r = await this.call({ destination: DBUS_NAME, path: DBUS_PATH, iface: DBUS_NAME, member: "GetNameOwner", signature: "s", body: [name] }, timeoutMs);
      return r.body[0] as string;
    } catch (err) {
      if (dbusErrorName(err) === "org.freedesktop.DBus.Error.NameHasNoOwner") return undefined;
      throw err;
    }
  }

  onMessage(listener: (msg: dbus.Message) => void): () => void {
    const l = (msg: dbus.Message) => {
      try {
        listener(msg);
      } catch (err) {
        // A throwing handler must not unwind into dbus-next's socket callback.
        this.#log.error({ err: errorMessage(err) }, "portal: message handler threw");
      }
    };
    this.#bus.on("message", l);
    return () => this.#bus.off("message", l);
  }

  /**
   * One portal Request: subscribes to Request.Response on the path the portal will use, then calls
   * the method with our handle_token, then waits (up to the deadline) for the Response.
   * @param step for messages, e.g. "ScreenCast.Start"
   * @param build the method's body; it gets the options dict with handle_token already in it.
   */
  async request(
    step: string,
    spec: Omit<CallSpec, "body">,
    build: (options: VardictIn) => unknown[],
    options: VardictIn,
    timeoutMs: number,
  ): Promise<Vardict> {
    const token = `wlwebrtc_${process.pid}_${++tokenCounter}_${randomBytes(4).toString("hex")}`;
    const sender = this.uniqueName.replace(/^:/, "").replaceAll(".", "_");
    const expected = `${PORTAL_OBJECT_PATH}/request/${sender}/${token}`;
    const paths = new Set([expected]);
    const rules = [responseRule(expected)];
    const deadline = Date.now() + timeoutMs;

    let resolveResponse!: (v: [number, Vardict]) => void;
    const response = new Promise<[number, Vardict]>((r) => (resolveResponse = r));
    const off = this.onMessage((msg) => {
      if (
        msg.type === dbus.MessageType.SIGNAL &&
        paths.has(msg.path) &&
        msg.interface === "org.freedesktop.portal.Request" &&
        msg.member === "Response"
      ) {
        resolveResponse([Number(msg.body[0]), (msg.body[1] ?? {}) as Vardict]);
      }
    });
    let handle = expected;
    let timer: NodeJS.Timeout | undefined;
    let unLost: (() => void) | undefined;
    try {
      await this.addMatch(rules[0]!, timeoutMs);
      let reply: dbus.Message;
      try {
        reply = await this.call({ ...spec, body: build({ ...options, handle_token: new dbus.Variant("s", token) }) }, Math.max(1, deadline - Date.now()));
      } catch (err) {
        throw mapCallError(step, err);
      }
      handle = String(reply.body[0]);
      if (handle !== expected) {
        // Portals older than 0.9 ignore handle_token; follow the path they gave us.
        paths.add(handle);
        rules.push(responseRule(handle));
        await this.addMatch(responseRule(handle), Math.max(1, deadline - Date.now()));
      }
      const lost = new Promise<never>((_, reject) => {
        unLost = this.onLost((reason) => reject(new PortalUnavailableError(`${step}: lost the D-Bus session bus (${reason})`)));
      });
      // The race below observes these; the no-op handlers keep a late rejection from going unhandled.
      lost.catch(() => undefined);
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          // Tell the portal to drop the request (and any dialog it shows).
          this.send({ path: handle, iface: "org.freedesktop.portal.Request", member: "Close" });
          reject(
            new PortalTimeoutError(
              step,
              `${step}: the portal did not answer within ${timeoutMs} ms. If a permission dialog is open on the desktop, answer it; otherwise the portal backend may be hung (restart xdg-desktop-portal and its backend).`,
            ),
          );
        }, Math.max(1, deadline - Date.now()));
      });
      timeout.catch(() => undefined);
      const [code, results] = await Promise.race([response, lost, timeout]);
      if (code === 0) return results;
      if (code === 1) {
        throw new PortalCancelledError(step, `${step}: the request was cancelled (the user, or the portal on the user's behalf, declined to share the screen). Allow screen sharing for wl-webrtc and try again.`);
      }
      throw new PortalFailedError(
        step,
        `${step}: the portal backend answered "failed" (response ${code}). Look at the log of the portal backend (xdg-desktop-portal-wlr, -gnome, -kde) for why; on a headless wlroots desktop without a GPU this is xdg-desktop-portal-wlr 0.7 failing to get a frame format.`,
      );
    } finally {
      if (timer) clearTimeout(timer);
      unLost?.();
      off();
      for (const r of rules) this.removeMatch(r);
    }
  }

  /** Disconnects; calls still in flight reject. Idempotent. */
  disconnect(): void {
    if (this.#disconnected) return;
    this.#disconnected = true;
    for (const reject of [...this.#pending]) reject(new PortalUnavailableError("The portal connection was closed"));
    this.#lostListeners.clear();
    // A socket error after we let go must not become an uncaught 'error' event.
    this.#bus.on("error", () => undefined);
    // A method call that arrives between end() and the socket closing would make dbus-next answer
    // UnknownMethod on the ended stream, which throws out of its socket callback (an uncaught
    // exception, seen in tests). Claim every call from now on and answer none.
    this.#bus.addMethodHandler(() => true);
    try {
      this.#bus.disconnect();
    } catch (err) {
      this.#log.debug({ err: errorMessage(err) }, "portal: disconnect");
    }
  }
}

function responseRule(path: string): string {
  return `type='signal',sender='${PORTAL_BUS_NAME}',interface='org.freedesktop.portal.Request',member='Response',path='${path}'`;
}

function shortIface(iface: string): string {
  return iface.replace(/^org\.freedesktop\.portal\./, "");
}

/** An error reply to a portal method (not a Response): bad arguments, an unknown session, a missing backend. */
export function mapCallError(step: string, err: unknown): Error {
  if (err instanceof PortalUnavailableError || err instanceof PortalTimeoutError) return err;
  const n = dbusErrorName(err);
  const text = err instanceof dbus.DBusError ? err.text : errorMessage(err);
  if (n !== undefined && NO_SERVICE_ERRORS.has(n)) {
    return new PortalUnavailableError(`${step}: xdg-desktop-portal is not available on the session bus: ${text}`, { cause: err });
  }
  if (n === "org.freedesktop.DBus.Error.UnknownMethod" || n === "org.freedesktop.DBus.Error.UnknownInterface") {
    return new PortalUnavailableError(`${step}: the portal does not implement this (${text}). Install a portal backend that offers it.`, { cause: err });
  }
  return new PortalFailedError(step, `${step}: the portal refused the call: ${text}${n ? ` (${n})` : ""}`, { cause: err });
}

/** Closes any fds a message carried (UNIX_FD values are plain fd numbers in dbus-next). */
function closeReplyFds(msg: dbus.Message): void {
  if (!msg.signature.includes("h")) return;
  for (const v of msg.body) {
    if (typeof v === "number" && Number.isInteger(v) && v > 2) {
      try {
        closeSync(v);
      } catch {
        // Not ours after all.
      }
    }
  }
}
