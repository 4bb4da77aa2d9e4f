/**
 * A screen-cast grant from xdg-desktop-portal: the PipeWire node(s) to capture, the PipeWire socket to
 * capture them through, and (when the portal offers input) a combined RemoteDesktop session so input
 * can later share the same grant.
 *
 * Teardown order matters (notes, trap 4: xdg-desktop-portal-wlr 0.7 crashes when a session is closed
 * while a consumer still streams): whoever owns the capture stream closes it FIRST, then calls
 * `PortalSession.close()`. close() itself closes its copy of the PipeWire fd before Session.Close for
 * the same reason.
 */
import { closeSync } from "node:fs";
import * as dbus from "dbus-next";
import type { Logger } from "../log/logger.js";
import { InvalidStateError, UnsupportedError, errorMessage } from "../util/errors.js";
import { TypedEmitter } from "../util/events.js";
import { mapCallError, PORTAL_BUS_NAME, PORTAL_OBJECT_PATH, PortalBus, Variant, type Vardict, type VardictIn } from "./bus.js";
import { PortalCancelledError, PortalFailedError, PortalTimeoutError, PortalUnavailableError } from "./errors.js";
import { RestoreTokenStore, type RestoreTokenKind } from "./restore-token.js";

const SC = "org.freedesktop.portal.ScreenCast";
const RD = "org.freedesktop.portal.RemoteDesktop";
const SESSION = "org.freedesktop.portal.Session";

export type SourceType = "monitor" | "window" | "virtual";
export type CursorMode = "hidden" | "embedded" | "metadata";
/** "auto": metadata where the portal offers it (the client draws the pointer), else embedded, else hidden. */
export type CursorModeRequest = CursorMode | "auto";

const SOURCE_BITS: Record<SourceType, number> = { monitor: 1, window: 2, virtual: 4 };
const CURSOR_BITS: Record<CursorMode, number> = { hidden: 1, embedded: 2, metadata: 4 };
/** persist_mode 2: the grant survives until the user revokes it. */
const PERSIST_UNTIL_REVOKED = 2;

export interface PortalStream {
  /** The PipeWire node to connect the capture stream to. */
  nodeId: number;
  /** Size in compositor (logical) pixels, when the portal says. */
  size?: [number, number];
  /** Position in the compositor's layout, when the portal says. */
  position?: [number, number];
  /**
   * What the stream shows: the portal's `source_type` when it is one of the requested types (xdpw 0.7
   * sends a wrong one), else the requested type when exactly one was requested, else "monitor".
   */
  sourceType: SourceType;
}

export interface PortalSessionOptions {
  /** The session bus to use (e.g. the agent's own headless desktop); default DBUS_SESSION_BUS_ADDRESS. */
  busAddress?: string;
  sourceTypes: SourceType[];
  cursorMode: CursorModeRequest;
  /** Ask for a grant that survives restarts (persist_mode 2) and reuse the saved restore token. */
  persist: boolean;
  /** Where the restore token lives (normally defaultStateDir(): `$XDG_STATE_HOME/wl-webrtc`). */
  stateDir: string;
  log: Logger;
  /** Use a combined RemoteDesktop session when the portal offers input devices. Default true. */
  remoteDesktop?: boolean;
  /** Let the user pick more than one source. Default false. */
  multiple?: boolean;
  /** Deadline for each portal step, in ms. Default 30 000 (a permission dialog may be on screen). */
  timeoutMs?: number;
}

export interface PortalClosedInfo {
  /**
   * revoked: the portal closed the session (the user stopped sharing, or the compositor/backend ended it);
   * portal-exited: xdg-desktop-portal left the bus; backend-exited: the portal backend that serves
   * ScreenCast (e.g. xdg-desktop-portal-wlr) left the bus, which takes the PipeWire node with it while
   * xdg-desktop-portal 1.16 keeps the session open and says nothing; bus-lost: the D-Bus connection broke.
   */
  reason: "revoked" | "portal-exited" | "backend-exited" | "bus-lost";
  message: string;
}

export type PortalSessionEvents = {
  /** The session ended from outside (not by close()); `close` follows. */
  closed: [PortalClosedInfo];
  close: [];
};

interface Capabilities {
  scVersion: number;
  sourceTypes: number;
  cursorModes: number;
  rdVersion: number;
  rdDevices: number;
}

/** One portal screen-cast session. Create with `await PortalSession.open(...)`. */
export class PortalSession extends TypedEmitter<PortalSessionEvents> {
  /** The portal's session object path. */
  readonly sessionHandle: string;
  readonly streams: readonly PortalStream[];
  /** Non-null when this is a combined RemoteDesktop + ScreenCast session; devices is the granted bitmask (1 keyboard, 2 pointer, 4 touchscreen). */
  readonly remoteDesktop: { devices: number } | null;
  /** Whether a saved restore token was passed to the portal for this session. */
  readonly restoreTokenUsed: boolean;
  /** The cursor mode in force ("auto" resolved against the portal's AvailableCursorModes). */
  readonly cursorMode: CursorMode;
  readonly #bus: PortalBus;
  readonly #log: Logger;
  readonly #fd: number;
  readonly #offs: (() => void)[] = [];
  #fdTaken = false;
  #endedOutside = false;
  #closing: Promise<void> | undefined;

  private constructor(a: {
    bus: PortalBus;
    log: Logger;
    sessionHandle: string;
    fd: number;
    streams: PortalStream[];
    remoteDesktop: { devices: number } | null;
    restoreTokenUsed: boolean;
    cursorMode: CursorMode;
    portalOwner: string | undefined;
    backendName: string | undefined;
  }) {
    super();
    this.#bus = a.bus;
    this.#log = a.log;
    this.sessionHandle = a.sessionHandle;
    this.#fd = a.fd;
    this.streams = Object.freeze(a.streams.map((s) => Object.freeze({ ...s })));
    this.remoteDesktop = a.remoteDesktop;
    this.restoreTokenUsed = a.restoreTokenUsed;
    this.cursorMode = a.cursorMode;

    this.#offs.push(
      a.bus.onMessage((msg) => {
        if (msg.type !== dbus.MessageType.SIGNAL) return;
        if (msg.path === this.sessionHandle && msg.interface === SESSION && msg.member === "Closed") {
          if (a.portalOwner !== undefined && msg.sender !== a.portalOwner) return;
          this.#endedFromOutside({
            reason: "revoked",
            message: "The portal closed the screen-cast session: sharing was stopped or revoked (by the user, the compositor or the portal backend). Start a new session to share again.",
          });
        } else if (msg.interface === "org.freedesktop.DBus" && msg.member === "NameOwnerChanged" && msg.body[2] === "") {
          if (msg.body[0] === PORTAL_BUS_NAME) {
            this.#endedFromOutside({
              reason: "portal-exited",
              message: "xdg-desktop-portal left the session bus (it exited or crashed), which ends every screen-cast session it held. Start a new session once it is back.",
            });
          } else if (a.backendName !== undefined && msg.body[0] === a.backendName) {
            this.#endedFromOutside({
              reason: "backend-exited",
              message: `The screen-cast portal backend (${a.backendName}) left the session bus (it exited or crashed); the captured PipeWire node is gone. Start a new session.`,
            });
          }
        }
      }),
      a.bus.onLost((reason) =>
        this.#endedFromOutside({ reason: "bus-lost", message: `The D-Bus session bus connection was lost (${reason}); the screen-cast session is gone.` }),
      ),
    );
  }

  /**
   * Asks the portal for a screen-cast session and resolves once the PipeWire remote is open.
   * Rejects with TypeError (bad options), PortalUnavailableError (no bus, no portal, no ScreenCast),
   * UnsupportedError (source type or cursor mode the portal does not offer), PortalCancelledError,
   * PortalFailedError or PortalTimeoutError.
   */
  static async open(options: PortalSessionOptions): Promise<PortalSession> {
    const o = validateOptions(options);
    const log = o.log.child({ component: "portal" });
    const timeoutMs = o.timeoutMs;
    const t0 = Date.now();
    const bus = await PortalBus.connect({ busAddress: o.busAddress, timeoutMs: Math.min(timeoutMs, 10_000), log });
    let sessionHandle: string | undefined;
    let fd: number | undefined;
    try {
      const caps = await probe(bus, timeoutMs, o.remoteDesktop);
      const cursorMode = resolveCursorMode(o.cursorMode, caps);
      checkSupported(o, cursorMode, caps);

      const store = new RestoreTokenStore(o.stateDir);
      const saved = o.persist ? await store.load() : undefined;

      // Subscribe to the portal leaving the bus before anything can end.
      await bus.addMatch(
        `type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='${PORTAL_BUS_NAME}'`,
        timeoutMs,
      );
      const portalOwner = await bus.nameOwner(PORTAL_BUS_NAME, timeoutMs);
      const backendName = await screenCastBackend(bus, timeoutMs, log);
      if (backendName !== undefined) {
        await bus.addMatch(`type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='${backendName}'`, timeoutMs);
      }

      let kind: RestoreTokenKind = "screencast";
      let token: string | undefined;
      if (caps.rdDevices !== 0) {
        // Detect input by a non-zero device mask AND a session that really opens (trap 5: a RemoteDesktop
        // interface with no devices whose CreateSession fails).
        token = saved?.kind === "remote-desktop" && caps.rdVersion >= 2 ? saved.token : undefined;
        try {
          sessionHandle = await createSession(bus, RD, timeoutMs);
          await selectSources(bus, sessionHandle, o, cursorMode, caps, "remote-desktop", undefined, timeoutMs);
          const dopts: VardictIn = { types: new Variant("u", caps.rdDevices) };
          if (o.persist && caps.rdVersion < 2) {
            // xdg-desktop-portal 1.16 has RemoteDesktop v1: no restore tokens for combined sessions.
            log.info({ remoteDesktopVersion: caps.rdVersion }, "portal: this portal's RemoteDesktop (version < 2) cannot persist a grant; the user will be asked on every start");
          }
          if (o.persist && caps.rdVersion >= 2) {
            dopts.persist_mode = new Variant("u", PERSIST_UNTIL_REVOKED);
            if (token !== undefined) dopts.restore_token = new Variant("s", token);
          }
          await bus.request("RemoteDesktop.SelectDevices", { path: PORTAL_OBJECT_PATH, iface: RD, member: "SelectDevices", signature: "oa{sv}" }, (opts) => [sessionHandle, opts], dopts, timeoutMs);
          kind = "remote-desktop";
        } catch (err) {
          if (err instanceof PortalCancelledError || bus.lost !== undefined) throw err;
          log.warn(
            { err: errorMessage(err), availableDeviceTypes: caps.rdDevices },
            "portal: RemoteDesktop is advertised but a session could not be set up; falling back to ScreenCast alone (no input through the portal)",
          );
          if (sessionHandle !== undefined) await closeSessionQuietly(bus, sessionHandle);
          sessionHandle = undefined;
          token = undefined;
        }
      }
      if (sessionHandle === undefined) {
        token = saved?.kind === "screencast" && o.persist && caps.scVersion >= 4 ? saved.token : undefined;
        sessionHandle = await createSession(bus, SC, timeoutMs);
        await selectSources(bus, sessionHandle, o, cursorMode, caps, "screencast", token, timeoutMs);
      }
      const handle = sessionHandle;
      await bus.addMatch(`type='signal',sender='${PORTAL_BUS_NAME}',interface='${SESSION}',member='Closed',path='${handle}'`, timeoutMs);

      const iface = kind === "remote-desktop" ? RD : SC;
      const step = kind === "remote-desktop" ? "RemoteDesktop.Start" : "ScreenCast.Start";
      let results: Vardict;
      try {
        results = await bus.request(step, { path: PORTAL_OBJECT_PATH, iface, member: "Start", signature: "osa{sv}" }, (opts) => [handle, "", opts], {}, timeoutMs);
      } catch (err) {
        if (token === undefined || !o.persist) throw err;
        // A stale or rejected token must not wedge every later start: forget it and say so. No retry
        // here; the next open() asks afresh.
        await store.clear().catch((e: unknown) => log.warn({ err: errorMessage(e) }, "portal: could not remove the restore token"));
        throw withTokenNote(err);
      }

      const newToken = results.restore_token?.value;
      if (o.persist) {
        try {
          if (typeof newToken === "string" && newToken !== "") {
            // Saved after every Start, even when unchanged (xdg-desktop-portal 1.16 hands a restored
            // token back as is; other versions issue a new one).
            await store.save({ kind, token: newToken });
            log.debug({ file: store.file, renewed: newToken !== token }, "portal: restore token saved");
          }
          // A token that was used but brought no successor will not restore again: drop it.
          else if (token !== undefined) await store.clear();
        } catch (err) {
          log.error({ err: errorMessage(err), file: store.file }, "portal: could not save the restore token; the next start will ask again");
        }
      }

      const streams = parseStreams(results.streams?.value, o.sourceTypes);
      if (streams.length === 0) {
        throw new PortalFailedError(step, `${step}: the portal started the session but offered no stream to capture. Pick a screen or window when asked.`);
      }
      const devices = kind === "remote-desktop" ? Number(results.devices?.value ?? 0) : 0;

      let reply: dbus.Message;
      try {
        reply = await bus.call({ path: PORTAL_OBJECT_PATH, iface: SC, member: "OpenPipeWireRemote", signature: "oa{sv}", body: [handle, {}] }, timeoutMs);
      } catch (err) {
        throw mapCallError("ScreenCast.OpenPipeWireRemote", err);
      }
      const got = reply.body[0];
      if (reply.signature !== "h" || typeof got !== "number" || !Number.isInteger(got) || got < 0) {
        throw new PortalFailedError(
          "ScreenCast.OpenPipeWireRemote",
          "ScreenCast.OpenPipeWireRemote: the reply carried no file descriptor. D-Bus fd passing is not working (dbus-next needs usocket built: npm rebuild usocket).",
        );
      }
      fd = got;

      const session = new PortalSession({
        bus,
        log,
        sessionHandle: handle,
        fd,
        streams,
        remoteDesktop: kind === "remote-desktop" ? { devices } : null,
        restoreTokenUsed: token !== undefined,
        cursorMode,
        portalOwner,
        backendName,
      });
      log.info(
        { ms: Date.now() - t0, streams: session.streams, remoteDesktop: session.remoteDesktop, restoreTokenUsed: session.restoreTokenUsed, cursorMode, availableCursorModes: names(CURSOR_BITS, caps.cursorModes) },
        "portal: screen-cast session started",
      );
      return session;
    } catch (err) {
      if (fd !== undefined) closeFdQuietly(fd);
      if (sessionHandle !== undefined) await closeSessionQuietly(bus, sessionHandle);
      bus.disconnect();
      throw err;
    }
  }

  /** The PipeWire socket from OpenPipeWireRemote (owned by this session unless taken). */
  get pipewireFd(): number {
    return this.#fd;
  }

  get closed(): boolean {
    return this.#closing !== undefined;
  }

  /**
   * Hands the PipeWire fd to the caller (e.g. the capture stream); close() then leaves it open and the
   * caller must close it. Call once. The fd is not close-on-exec (dbus-next/usocket receive it that
   * way): dup it with F_DUPFD_CLOEXEC and close the original promptly.
   */
  takePipeWireFd(): number {
    if (this.closed) throw new InvalidStateError("PortalSession is closed");
    if (this.#fdTaken) throw new InvalidStateError("the PipeWire fd was already taken");
    this.#fdTaken = true;
    return this.#fd;
  }

  /**
   * Ends the session: closes the PipeWire fd (unless taken), calls Session.Close, disconnects from the
   * bus, emits `close` once. Idempotent; every call returns the same promise, which never rejects.
   * Close the capture stream before this (trap 4).
   */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closing = this.#doClose();
    return this.#closing;
  }

  async #doClose(): Promise<void> {
    for (const off of this.#offs.splice(0)) off();
    if (!this.#fdTaken) closeFdQuietly(this.#fd);
    if (!this.#endedOutside && this.#bus.lost === undefined) await closeSessionQuietly(this.#bus, this.sessionHandle);
    this.#bus.disconnect();
    this.#log.debug({ session: this.sessionHandle }, "portal: session closed");
    this.safeEmit("close");
  }

  #endedFromOutside(info: PortalClosedInfo): void {
    if (this.closed) return;
    // After Closed, or with the portal gone, there is no session to close. When only the backend went
    // away, the portal still holds the session: close() still calls Session.Close to free it.
    this.#endedOutside = info.reason !== "backend-exited";
    this.#log.warn({ reason: info.reason }, info.message);
    this.safeEmit("closed", info);
    void this.close();
  }
}

interface ValidOptions {
  busAddress: string | undefined;
  sourceTypes: SourceType[];
  cursorMode: CursorModeRequest;
  persist: boolean;
  stateDir: string;
  log: Logger;
  remoteDesktop: boolean;
  multiple: boolean;
  timeoutMs: number;
}

function validateOptions(o: PortalSessionOptions): ValidOptions {
  if (typeof o !== "object" || o === null) throw new TypeError("PortalSession.open: options must be an object");
  if (o.busAddress !== undefined && (typeof o.busAddress !== "string" || o.busAddress === "")) {
    throw new TypeError("PortalSession.open: busAddress must be a non-empty D-Bus address string");
  }
  if (!Array.isArray(o.sourceTypes) || o.sourceTypes.length === 0) {
    throw new TypeError('PortalSession.open: sourceTypes must be a non-empty array of "monitor", "window", "virtual"');
  }
  for (const t of o.sourceTypes) {
    if (!Object.hasOwn(SOURCE_BITS, t)) throw new TypeError(`PortalSession.open: unknown source type ${JSON.stringify(t)} (use "monitor", "window" or "virtual")`);
  }
  if (typeof o.cursorMode !== "string" || (o.cursorMode !== "auto" && !Object.hasOwn(CURSOR_BITS, o.cursorMode))) {
    throw new TypeError(`PortalSession.open: unknown cursorMode ${JSON.stringify(o.cursorMode)} (use "auto", "hidden", "embedded" or "metadata")`);
  }
  if (typeof o.persist !== "boolean") throw new TypeError("PortalSession.open: persist must be a boolean");
  if (typeof o.stateDir !== "string" || o.stateDir === "") throw new TypeError("PortalSession.open: stateDir must be a non-empty path");
  if (typeof o.log !== "object" || o.log === null || typeof o.log.child !== "function") throw new TypeError("PortalSession.open: log must be a pino Logger");
  if (o.remoteDesktop !== undefined && typeof o.remoteDesktop !== "boolean") throw new TypeError("PortalSession.open: remoteDesktop must be a boolean");
  if (o.multiple !== undefined && typeof o.multiple !== "boolean") throw new TypeError("PortalSession.open: multiple must be a boolean");
  const timeoutMs = o.timeoutMs ?? 30_000;
  if (typeof timeoutMs !== "number" || !Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new TypeError("PortalSession.open: timeoutMs must be a positive number");
  return {
    busAddress: o.busAddress,
    sourceTypes: [...new Set(o.sourceTypes)],
    cursorMode: o.cursorMode,
    persist: o.persist,
    stateDir: o.stateDir,
    log: o.log,
    remoteDesktop: o.remoteDesktop ?? true,
    multiple: o.multiple ?? false,
    timeoutMs,
  };
}

async function probe(bus: PortalBus, timeoutMs: number, wantRd: boolean): Promise<Capabilities> {
  const scVersion = await bus.getProperty(SC, "version", timeoutMs);
  if (scVersion === undefined) {
    throw new PortalUnavailableError(
      `xdg-desktop-portal on ${bus.address} has no ScreenCast interface: no portal backend for this desktop (XDG_CURRENT_DESKTOP) provides it. Install xdg-desktop-portal-wlr (sway and other wlroots compositors), xdg-desktop-portal-gnome or xdg-desktop-portal-kde, then restart xdg-desktop-portal.`,
    );
  }
  const num = (v: unknown) => (typeof v === "number" ? v : 0);
  const caps: Capabilities = {
    scVersion: num(scVersion),
    sourceTypes: num(await bus.getProperty(SC, "AvailableSourceTypes", timeoutMs)),
    cursorModes: num(await bus.getProperty(SC, "AvailableCursorModes", timeoutMs)),
    rdVersion: 0,
    rdDevices: 0,
  };
  if (wantRd) {
    const rdVersion = await bus.getProperty(RD, "version", timeoutMs);
    if (rdVersion !== undefined) {
      caps.rdVersion = num(rdVersion);
      caps.rdDevices = num(await bus.getProperty(RD, "AvailableDeviceTypes", timeoutMs));
    }
  }
  return caps;
}

/**
 * The bus name of the backend that serves ScreenCast, when exactly one running backend does. Watched
 * because xdg-desktop-portal 1.16 does not close its sessions when the backend exits (seen: killing
 * xdpw 0.7 leaves the session "open", with no Closed signal, while its PipeWire node is gone).
 */
async function screenCastBackend(bus: PortalBus, timeoutMs: number, log: Logger): Promise<string | undefined> {
  try {
    const r = await bus.call({ destination: "org.freedesktop.DBus", path: "/org/freedesktop/DBus", iface: "org.freedesktop.DBus", member: "ListNames" }, timeoutMs);
    const candidates = (r.body[0] as string[]).filter((n) => n.startsWith("org.freedesktop.impl.portal.desktop."));
    const found: string[] = [];
    for (const name of candidates) {
      try {
        await bus.call(
          {
            destination: name,
            path: PORTAL_OBJECT_PATH,
            iface: "org.freedesktop.DBus.Properties",
            member: "Get",
            signature: "ss",
            body: ["org.freedesktop.impl.portal.ScreenCast", "AvailableSourceTypes"],
          },
          Math.min(timeoutMs, 2000),
        );
        found.push(name);
      } catch {
        // Not a ScreenCast backend (or not answering): not the one to watch.
      }
    }
    if (found.length === 1) return found[0];
    log.debug({ found }, "portal: not watching a ScreenCast backend (none or several running)");
  } catch (err) {
    log.debug({ err: errorMessage(err) }, "portal: could not list portal backends");
  }
  return undefined;
}

function names<K extends string>(bits: Record<K, number>, mask: number): K[] {
  return (Object.keys(bits) as K[]).filter((k) => (mask & bits[k]) !== 0);
}

/**
 * "auto" picks metadata when the portal offers it (the pointer travels apart from the picture: the
 * client draws it at once, without waiting for an encoded frame), else embedded (in the picture), else
 * hidden. Portals before ScreenCast v2 have no cursor_mode option: what they do is theirs (embedded on
 * the ones seen), so that is what is announced.
 */
function resolveCursorMode(req: CursorModeRequest, caps: Capabilities): CursorMode {
  if (req !== "auto") return req;
  if (caps.scVersion < 2) return "embedded";
  if (caps.cursorModes & CURSOR_BITS.metadata) return "metadata";
  if (caps.cursorModes & CURSOR_BITS.embedded) return "embedded";
  return "hidden";
}

function checkSupported(o: ValidOptions, cursorMode: CursorMode, caps: Capabilities): void {
  const missing = o.sourceTypes.filter((t) => (caps.sourceTypes & SOURCE_BITS[t]) === 0);
  if (missing.length > 0) {
    const avail = names(SOURCE_BITS, caps.sourceTypes);
    throw new UnsupportedError(
      `The screen-cast portal cannot capture source type ${missing.map((m) => `"${m}"`).join(", ")}; it offers ${avail.length ? avail.map((a) => `"${a}"`).join(", ") : "none"}. Set the capture source type to one of those.`,
    );
  }
  // Portals before ScreenCast v2 have no cursor modes at all: only "embedded"-like behaviour, unknown.
  if (caps.scVersion >= 2 && (caps.cursorModes & CURSOR_BITS[cursorMode]) === 0) {
    const avail = names(CURSOR_BITS, caps.cursorModes);
    throw new UnsupportedError(
      `The screen-cast portal does not support cursor mode "${cursorMode}"; it offers ${avail.length ? avail.map((a) => `"${a}"`).join(", ") : "none"}. Set the cursor mode to one of those.`,
    );
  }
}

async function createSession(bus: PortalBus, iface: string, timeoutMs: number): Promise<string> {
  const step = `${iface === RD ? "RemoteDesktop" : "ScreenCast"}.CreateSession`;
  const results = await bus.request(
    step,
    { path: PORTAL_OBJECT_PATH, iface, member: "CreateSession", signature: "a{sv}" },
    (opts) => [opts],
    { session_handle_token: new Variant("s", `wlwebrtc_s${process.pid}_${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`) },
    timeoutMs,
  );
  const handle = results.session_handle?.value;
  if (typeof handle !== "string" || handle === "") throw new PortalFailedError(step, `${step}: the portal answered without a session handle.`);
  return handle;
}

async function selectSources(
  bus: PortalBus,
  handle: string,
  o: ValidOptions,
  cursorMode: CursorMode,
  caps: Capabilities,
  kind: RestoreTokenKind,
  token: string | undefined,
  timeoutMs: number,
): Promise<void> {
  const opts: VardictIn = {
    types: new Variant("u", o.sourceTypes.reduce((m, t) => m | SOURCE_BITS[t], 0)),
    multiple: new Variant("b", o.multiple),
  };
  if (caps.scVersion >= 2) opts.cursor_mode = new Variant("u", CURSOR_BITS[cursorMode]);
  // On a RemoteDesktop session persistence goes through SelectDevices; the portal rejects it here
  // ("Remote desktop sessions cannot persist").
  if (kind === "screencast" && o.persist && caps.scVersion >= 4) {
    opts.persist_mode = new Variant("u", PERSIST_UNTIL_REVOKED);
    if (token !== undefined) opts.restore_token = new Variant("s", token);
  }
  await bus.request("ScreenCast.SelectSources", { path: PORTAL_OBJECT_PATH, iface: SC, member: "SelectSources", signature: "oa{sv}" }, (x) => [handle, x], opts, timeoutMs);
}

function parseStreams(v: unknown, requested: SourceType[]): PortalStream[] {
  if (!Array.isArray(v)) return [];
  const out: PortalStream[] = [];
  for (const entry of v) {
    if (!Array.isArray(entry)) continue;
    const [nodeId, props] = entry as [unknown, Vardict | undefined];
    if (typeof nodeId !== "number") continue;
    const s: PortalStream = { nodeId, sourceType: requested.length === 1 ? requested[0]! : "monitor" };
    const pair = (x: unknown): [number, number] | undefined =>
      Array.isArray(x) && x.length === 2 && typeof x[0] === "number" && typeof x[1] === "number" ? [x[0], x[1]] : undefined;
    const size = pair(props?.size?.value);
    if (size) s.size = size;
    const position = pair(props?.position?.value);
    if (position) s.position = position;
    // Trust source_type only when it is one of the requested types: xdpw 0.7 reports 2 ("window") for
    // a monitor cast, and a portal can only hand out what was asked for.
    const st = props?.source_type?.value;
    if (typeof st === "number") {
      const n = names(SOURCE_BITS, st)[0];
      if (n !== undefined && requested.includes(n)) s.sourceType = n;
    }
    out.push(s);
  }
  return out;
}

async function closeSessionQuietly(bus: PortalBus, handle: string): Promise<void> {
  try {
    await bus.call({ path: handle, iface: SESSION, member: "Close" }, 2000);
  } catch {
    // Already closed by the portal, or the portal is gone: either way the session is over.
  }
}

function closeFdQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // Closed already.
  }
}

function withTokenNote(err: unknown): Error {
  const note = "This start used the saved restore token (the remembered screen-sharing grant); the token was discarded so the next start asks afresh instead of failing the same way.";
  if (err instanceof PortalCancelledError) return new PortalCancelledError(err.step, `${err.message} ${note}`);
  if (err instanceof PortalTimeoutError) return new PortalTimeoutError(err.step, `${err.message} ${note}`);
  if (err instanceof PortalFailedError) return new PortalFailedError(err.step, `${err.message} ${note}`, { cause: err });
  return err instanceof Error ? err : new Error(String(err));
}
