import { closeSync } from "node:fs";
import type { Logger } from "../log/logger.js";
import type { CaptureConfig } from "../config/schema.js";
import { PortalSession, type PortalClosedInfo } from "../portal/index.js";
import { CaptureStream, type CaptureFormat, type CursorInfo, type DmabufChoice, type FrameInfo } from "./capture-stream.js";
import { TypedEmitter } from "../util/events.js";
import { WlError } from "../util/errors.js";

/** Between disconnecting the PipeWire stream and closing the portal session. */
const CLOSE_GRACE_MS = 100;

export interface DesktopCaptureOptions {
  capture: CaptureConfig;
  /** Where the restore token lives. */
  stateDir: string;
  /** The desktop's session bus (the user's, or our headless desktop's). */
  busAddress: string | undefined;
  log: Logger;
  /** Deadline for each portal step (a permission dialog may be on screen). */
  portalTimeoutMs?: number;
  /** DMA-BUF capture or not (chooseDmabufCapture, agent/encode/probe.ts); absent: shared memory. */
  dmabuf?: DmabufChoice;
}

export interface CaptureEnded {
  /** revoked / portal-exited / backend-exited / bus-lost (from the portal), or pipewire (the stream failed). */
  reason: PortalClosedInfo["reason"] | "pipewire";
  message: string;
}

export type DesktopCaptureEvents = {
  frame: [FrameInfo];
  format: [CaptureFormat];
  /** Cursor metadata (portal cursor mode "metadata" only). */
  cursor: [CursorInfo];
  /** Capture stopped from outside (sharing revoked, portal or PipeWire gone); `close` follows. */
  ended: [CaptureEnded];
  close: [];
};

/**
 * The shared desktop as a frame source: a portal screen-cast session and the PipeWire stream of its
 * first node. Closes in the order the compositors need: the PipeWire stream first, then the portal
 * session (xdpw 0.7 crashes the other way round).
 */
export class DesktopCapture extends TypedEmitter<DesktopCaptureEvents> {
  readonly portal: PortalSession;
  readonly stream: CaptureStream;
  readonly #log: Logger;
  #closing: Promise<void> | undefined;
  #closed = false;

  private constructor(portal: PortalSession, stream: CaptureStream, log: Logger) {
    super();
    this.portal = portal;
    this.stream = stream;
    this.#log = log;
    stream.on("frame", (f) => this.safeEmit("frame", f));
    stream.on("format", (f) => this.safeEmit("format", f));
    stream.on("cursor", (c) => this.safeEmit("cursor", c));
    stream.on("error", (err) => this.#end({ reason: "pipewire", message: err.message }));
    portal.on("closed", (info) => this.#end({ reason: info.reason, message: info.message }));
  }

  /** Asks the portal for the screen (once: the restore token is kept) and connects to its stream. */
  static async open(opts: DesktopCaptureOptions): Promise<DesktopCapture> {
    const log = opts.log;
    const t0 = performance.now();
    const portal = await PortalSession.open({
      ...(opts.busAddress !== undefined ? { busAddress: opts.busAddress } : {}),
      sourceTypes: opts.capture.source_types,
      cursorMode: opts.capture.cursor_mode,
      persist: opts.capture.persist,
      stateDir: opts.stateDir,
      log: log.child({ stage: "portal" }),
      ...(opts.portalTimeoutMs !== undefined ? { timeoutMs: opts.portalTimeoutMs } : {}),
    });
    const first = portal.streams[0];
    if (!first) {
      await portal.close();
      throw new WlError("capture-failed", "the portal granted a session with no stream");
    }
    let stream: CaptureStream;
    try {
      stream = await CaptureStream.open({
        fd: portal.pipewireFd,
        nodeId: first.nodeId,
        tileSize: opts.capture.damage_tile_size,
        log: log.child({ stage: "capture" }),
        ...(opts.dmabuf !== undefined ? { dmabuf: opts.dmabuf } : {}),
      });
    } catch (err) {
      await portal.close();
      throw err;
    }
    // The stream holds its own (close-on-exec) duplicate; ours would leak into every child process.
    closeSync(portal.takePipeWireFd());
    log.info({ nodeId: first.nodeId, size: first.size, restoreTokenUsed: portal.restoreTokenUsed, remoteDesktop: portal.remoteDesktop, ms: Math.round(performance.now() - t0) }, "desktop capture open");
    return new DesktopCapture(portal, stream, log);
  }

  get closed(): boolean {
    return this.#closed;
  }

  #end(info: CaptureEnded): void {
    if (this.#closing) return;
    this.#log.warn(info, "desktop capture ended");
    this.safeEmit("ended", info);
    void this.close();
  }

  /** Stream first, then the portal session. Idempotent; `close` once. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.stream.close();
      // Our disconnect reaches the portal backend through PipeWire, Session.Close through D-Bus: the
      // second can overtake the first, and xdpw 0.7 then crashes or wedges (trap 4 in the notes; seen
      // here as a stream stuck "paused" and a portal that stops answering, about 1 run in 4 of 50
      // rapid cycles). Give the backend a moment to see the consumer leave.
      await new Promise((r) => setTimeout(r, CLOSE_GRACE_MS));
      try {
        await this.portal.close();
      } catch (err) {
        this.#log.warn({ err }, "closing the portal session failed");
      }
      this.#closed = true;
      this.safeEmit("close");
      this.removeAllListeners();
    })();
    return this.#closing;
  }
}
