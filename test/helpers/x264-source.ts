import { spawn, type ChildProcess } from "node:child_process";
import { TypedEmitter } from "../../agent/util/events.js";
import type { CursorMode, CursorUpdate, EncodedFrame, EncodedSourceEvents, EncodedVideoSource, H264Format, KeyframeReason } from "../../agent/encode/types.js";
import { spsProfileLevelId, splitAnnexB } from "../../agent/rtc/h264.js";

export interface X264SourceOptions {
  width?: number;
  height?: number;
  fps?: number;
  /** Frames between IDRs. ffmpeg cannot be asked for an IDR at run time, so late joiners wait for one. */
  gop?: number;
  bitrateKbps?: number;
}

/**
 * A real H.264 stream for the rtc stage until the desktop pipeline exists: ffmpeg's testsrc2 through
 * libx264 (baseline, zerolatency, no B-frames), Annex-B on a pipe, split into access units at each AUD.
 * Honest about what it cannot do: keyframe requests and bitrate changes are recorded, not obeyed
 * (keyframes come every `gop` frames).
 */
export class X264TestSource extends TypedEmitter<EncodedSourceEvents> implements EncodedVideoSource {
  readonly keyframeRequests: KeyframeReason[] = [];
  readonly bitrateRequests: number[] = [];
  framesEmitted = 0;
  keyframesEmitted = 0;
  /**
   * The cursor mode this source claims. Tests set "metadata" and feed `emitCursor` to exercise the
   * stage -> data channel -> client overlay path: no portal here offers cursor metadata (xdpw 0.7 has
   * hidden and embedded only), so the portal end of that path is the one part that cannot run here.
   */
  cursorMode: CursorMode = "embedded";
  #format: H264Format | null = null;
  #target: number;
  #proc: ChildProcess;
  #buf: Buffer = Buffer.alloc(0);
  #au: Buffer[] = [];
  #seq = 0;
  #rtpBase = Math.floor(Math.random() * 2 ** 31);
  #t0 = performance.now();
  #closed = false;
  #exited: Promise<void>;
  readonly #o: Required<X264SourceOptions>;

  /** Emits a `cursor` event as DesktopVideoSource does from SPA_META_Cursor (see cursorMode). */
  emitCursor(c: CursorUpdate): void {
    this.safeEmit("cursor", c);
  }

  private constructor(o: Required<X264SourceOptions>) {
    super();
    this.#o = o;
    this.#target = o.bitrateKbps * 1000;
    const args = [
      "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
      "-f", "lavfi", "-i", `testsrc2=size=${o.width}x${o.height}:rate=${o.fps}`,
      "-c:v", "libx264", "-profile:v", "baseline", "-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0",
      "-g", String(o.gop), "-keyint_min", String(o.gop), "-sc_threshold", "0",
      "-b:v", `${o.bitrateKbps}k`, "-maxrate", `${o.bitrateKbps}k`, "-bufsize", `${Math.round(o.bitrateKbps / o.fps)}k`,
      "-x264-params", "aud=1:repeat-headers=1", "-pix_fmt", "yuv420p",
      "-f", "h264", "-",
    ];
    this.#proc = spawn("ffmpeg", args, { stdio: ["ignore", "pipe", "pipe"] });
    this.#exited = new Promise((resolve) => this.#proc.once("exit", () => resolve()));
    let errText = "";
    this.#proc.stderr!.on("data", (d: Buffer) => {
      errText = (errText + d.toString()).slice(-2000);
    });
    this.#proc.stdout!.on("data", (d: Buffer) => this.#onData(d));
    this.#proc.once("exit", (code, signal) => {
      if (!this.#closed) {
        this.safeEmit("error", new Error(`ffmpeg exited (${code ?? signal}): ${errText.trim()}`));
        void this.close();
      }
    });
  }

  /** Starts ffmpeg; resolves at the first keyframe (the format is known then). */
  static async open(opts: X264SourceOptions = {}): Promise<X264TestSource> {
    const o = { width: 1280, height: 720, fps: 30, gop: 60, bitrateKbps: 1500, ...opts };
    const src = new X264TestSource(o);
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("ffmpeg produced no keyframe within 10 s")), 10_000);
      src.once("frame", () => {
        clearTimeout(t);
        resolve();
      });
      src.once("error", (e) => {
        clearTimeout(t);
        reject(e);
      });
    }).catch(async (err: unknown) => {
      await src.close();
      throw err;
    });
    return src;
  }

  get pid(): number | undefined {
    return this.#proc.pid;
  }

  get format(): H264Format | null {
    return this.#format;
  }

  get targetBitrate(): number {
    return this.#target;
  }

  get closed(): boolean {
    return this.#closed;
  }

  requestKeyframe(reason: KeyframeReason): void {
    this.keyframeRequests.push(reason);
  }

  setTargetBitrate(bps: number): void {
    this.bitrateRequests.push(bps);
    this.#target = bps;
  }

  #onData(d: Buffer): void {
    this.#buf = this.#buf.length === 0 ? d : Buffer.concat([this.#buf, d]);
    // Everything up to the last start code is complete NAL units; keep the rest for later.
    const last = this.#buf.lastIndexOf(Buffer.from([0, 0, 1]));
    if (last <= 0) return;
    const cut = last > 0 && this.#buf[last - 1] === 0 ? last - 1 : last;
    const complete = this.#buf.subarray(0, cut);
    this.#buf = Buffer.from(this.#buf.subarray(cut)) as Buffer;
    for (const nal of splitAnnexB(complete)) {
      if ((nal[0]! & 0x1f) === 9 && this.#au.length > 0) this.#emitAu();
      this.#au.push(nal);
    }
  }

  #emitAu(): void {
    const nals = this.#au;
    this.#au = [];
    if (this.#closed) return;
    const keyframe = nals.some((n) => (n[0]! & 0x1f) === 5);
    if (this.#format === null) {
      if (!keyframe) return; // start at a keyframe, as a real encoder does
      const sps = nals.find((n) => (n[0]! & 0x1f) === 7);
      const plid = sps ? spsProfileLevelId(sps) : undefined;
      if (!plid) return;
      this.#format = { profileLevelId: plid, packetizationMode: 1 };
      this.safeEmit("format", { ...this.#format, width: this.#o.width, height: this.#o.height, backend: "x264-ffmpeg" });
    }
    const sc = Buffer.from([0, 0, 0, 1]);
    // Drop the AUD: it carries nothing a WebRTC receiver needs.
    const data = Buffer.concat(nals.filter((n) => (n[0]! & 0x1f) !== 9).flatMap((n) => [sc, n]));
    const now = Date.now();
    const seq = ++this.#seq;
    const frame: EncodedFrame = {
      data,
      keyframe,
      seq,
      width: this.#o.width,
      height: this.#o.height,
      captureTimeMs: now,
      readyTimeMs: now,
      encodeUs: 0,
      rtpTimestamp: (this.#rtpBase + Math.round(((performance.now() - this.#t0) * 90))) >>> 0,
      backend: "x264-ffmpeg",
    };
    this.framesEmitted++;
    if (keyframe) this.keyframesEmitted++;
    this.safeEmit("frame", frame);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#proc.exitCode === null && this.#proc.signalCode === null && this.#proc.pid !== undefined) {
      try {
        process.kill(this.#proc.pid, "SIGTERM");
      } catch {
        // already gone
      }
    }
    const killTimer = setTimeout(() => {
      if (this.#proc.pid !== undefined && this.#proc.exitCode === null) {
        try {
          process.kill(this.#proc.pid, "SIGKILL");
        } catch {
          // gone
        }
      }
    }, 2000);
    await this.#exited;
    clearTimeout(killTimer);
    this.safeEmit("close");
    this.removeAllListeners();
  }
}
