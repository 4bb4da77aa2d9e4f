/**
 * A scriptable xdg-desktop-portal BACKEND (org.freedesktop.impl.portal.ScreenCast + RemoteDesktop)
 * for the paths the real backend on this machine cannot reach: xdpw 0.7 has no RemoteDesktop and never
 * emits Session.Closed. The frontend under test stays the real xdg-desktop-portal 1.16 with a real
 * PipeWire, so PortalSession still talks to the real portal; only what sits behind it is scripted.
 */
import * as dbus from "dbus-next";
import { guardUsocketClose } from "../../agent/util/usocket-guard.js";

export const TEST_BACKEND_NAME = "org.freedesktop.impl.portal.desktop.wltest";
const OBJ = "/org/freedesktop/portal/desktop";
const SC = "org.freedesktop.impl.portal.ScreenCast";
const RD = "org.freedesktop.impl.portal.RemoteDesktop";
const IMPL_SESSION = "org.freedesktop.impl.portal.Session";

export interface TestBackendConfig {
  /** AvailableDeviceTypes of RemoteDesktop (0 = the trap-5 shape). */
  rdDevices: number;
  /** RemoteDesktop.CreateSession answers 2 ("failed"). */
  rdCreateFails: boolean;
  nodeId: number;
  /** How ScreenCast.Start answers: 0 ok, 1 cancelled (the user said no), 2 failed, or never. Default 0. */
  startAnswer?: 0 | 1 | 2 | "never";
}

export class TestBackend {
  readonly calls: string[] = [];
  /** The options dict (last argument) of every call on the portal object, as received. */
  readonly options: { call: string; options: unknown }[] = [];
  readonly sessions = new Set<string>();
  readonly config: TestBackendConfig;
  readonly #bus: dbus.MessageBus;

  private constructor(bus: dbus.MessageBus, config: TestBackendConfig) {
    this.#bus = bus;
    this.config = config;
  }

  static async start(busAddress: string, config: TestBackendConfig): Promise<TestBackend> {
    guardUsocketClose();
    const bus = dbus.sessionBus({ busAddress } as dbus.SessionBusOptions);
    bus.on("error", () => undefined);
    const b = new TestBackend(bus, config);
    bus.addMethodHandler((msg: dbus.Message) => b.#handle(msg));
    await bus.requestName(TEST_BACKEND_NAME, dbus.NameFlag.DO_NOT_QUEUE);
    return b;
  }

  /** The backend ends a session on its own (as a compositor does when the user stops sharing). */
  emitClosed(sessionHandle: string): void {
    this.#bus.send(dbus.Message.newSignal(sessionHandle, IMPL_SESSION, "Closed", "", []));
  }

  close(): void {
    // The portal may still call us (e.g. a late impl Session.Close); dbus-next would answer on the
    // ended stream and throw out of its socket callback. Swallow calls from here on.
    this.#bus.addMethodHandler(() => true);
    this.#bus.disconnect();
  }

  /** Waits until a call has been seen (the portal forwards some calls after answering ours). */
  async waitForCall(name: string, ms = 2000): Promise<boolean> {
    const until = Date.now() + ms;
    while (!this.calls.includes(name) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    return this.calls.includes(name);
  }

  #props(iface: string): Record<string, dbus.Variant> | undefined {
    if (iface === SC) {
      return {
        AvailableSourceTypes: new dbus.Variant("u", 1),
        AvailableCursorModes: new dbus.Variant("u", 3),
        version: new dbus.Variant("u", 4),
      };
    }
    if (iface === RD) {
      return { AvailableDeviceTypes: new dbus.Variant("u", this.config.rdDevices), version: new dbus.Variant("u", 2) };
    }
    return undefined;
  }

  #reply(msg: dbus.Message, signature: string, body: unknown[]): boolean {
    this.#bus.send(dbus.Message.newMethodReturn(msg, signature, body));
    return true;
  }

  #streams(): dbus.Variant {
    return new dbus.Variant("a(ua{sv})", [
      [this.config.nodeId, { size: new dbus.Variant("(ii)", [640, 480]), position: new dbus.Variant("(ii)", [0, 0]), source_type: new dbus.Variant("u", 1) }],
    ]);
  }

  #handle(msg: dbus.Message): boolean {
    if (msg.type !== dbus.MessageType.METHOD_CALL) return false;
    const key = `${msg.interface}.${msg.member}`;
    if (msg.path === OBJ && msg.body.length > 0) this.options.push({ call: key, options: msg.body[msg.body.length - 1] });
    if (msg.path === OBJ && msg.interface === "org.freedesktop.DBus.Properties") {
      const props = this.#props(String(msg.body[0]));
      if (msg.member === "GetAll") return this.#reply(msg, "a{sv}", [props ?? {}]);
      if (msg.member === "Get" && props && props[String(msg.body[1])]) return this.#reply(msg, "v", [props[String(msg.body[1])]]);
      // dbus-next's bundled types declare newError's first parameter as a string; it takes the call.
      this.#bus.send(dbus.Message.newError(msg as unknown as string, "org.freedesktop.DBus.Error.InvalidArgs", "no such property"));
      return true;
    }
    if (msg.interface === IMPL_SESSION && msg.member === "Close") {
      this.calls.push(key);
      this.sessions.delete(msg.path);
      return this.#reply(msg, "", []);
    }
    if (msg.interface === "org.freedesktop.impl.portal.Request" && msg.member === "Close") {
      this.calls.push(key);
      return this.#reply(msg, "", []);
    }
    if (msg.path !== OBJ) return false;
    this.calls.push(key);
    const ok = (results: Record<string, dbus.Variant>) => this.#reply(msg, "ua{sv}", [0, results]);
    switch (key) {
      case `${SC}.CreateSession`:
        this.sessions.add(String(msg.body[1]));
        return ok({});
      case `${RD}.CreateSession`:
        if (this.config.rdCreateFails) return this.#reply(msg, "ua{sv}", [2, {}]);
        this.sessions.add(String(msg.body[1]));
        return ok({});
      case `${SC}.SelectSources`:
      case `${RD}.SelectDevices`:
        return ok({});
      case `${SC}.Start`: {
        const a = this.config.startAnswer ?? 0;
        if (a === "never") return true; // swallow the call: a hung backend / unanswered dialog
        if (a !== 0) return this.#reply(msg, "ua{sv}", [a, {}]);
        return ok({ streams: this.#streams() });
      }
      case `${RD}.Start`:
        // restore_data makes the portal mint a restore token when the client asked to persist.
        return ok({
          streams: this.#streams(),
          devices: new dbus.Variant("u", this.config.rdDevices),
          persist_mode: new dbus.Variant("u", 2),
          restore_data: new dbus.Variant("(suv)", ["wltest", 1, new dbus.Variant("s", "grant")]),
        });
      default:
        return false;
    }
  }
}
