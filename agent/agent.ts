import type { Config } from "./config/schema.js";
import type { Logger } from "./log/logger.js";
import { Metrics } from "./metrics/metrics.js";
import { MetricsServer } from "./metrics/server.js";
import { TokenService } from "./auth/tokens.js";
import { loadOrCreateSecret } from "./auth/secret.js";
import { SignalingServer } from "./signaling/server.js";
import { VERSION } from "./version.js";
import { openSharedDesktop, type SharedDesktop } from "./desktop/index.js";
import { DesktopVideoSource } from "./encode/desktop-source.js";
import { EncodeMetrics } from "./encode/metrics.js";
import { RtcStage, type VideoSourceFactory } from "./rtc/stage.js";

export interface AgentOptions {
  config: Config;
  log: Logger;
  env?: NodeJS.ProcessEnv;
  /**
   * Opens the shared encoded video when the first viewer arrives (the capture+encode pipeline; tests
   * pass a real x264 stream). Without it, offers are answered `unavailable`.
   */
  videoSource?: VideoSourceFactory;
}

/**
 * The running agent: owns every long-lived part and closes them in reverse order of opening.
 * Parts are opened one by one; if one fails, those already open are closed before the error is thrown.
 */
export class Agent {
  readonly config: Config;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly tokens: TokenService;
  #signaling: SignalingServer | undefined;
  #metricsServer: MetricsServer | undefined;
  #rtc: RtcStage | undefined;
  readonly #videoSource: VideoSourceFactory | undefined;
  #desktop: SharedDesktop | undefined;
  readonly #env: NodeJS.ProcessEnv;
  #closing: Promise<void> | undefined;

  private constructor(opts: AgentOptions, tokens: TokenService, metrics: Metrics) {
    this.config = opts.config;
    this.log = opts.log;
    this.tokens = tokens;
    this.metrics = metrics;
    this.#env = opts.env ?? process.env;
    this.#videoSource = opts.videoSource;
  }

  /** Makes the token service without starting anything (used by `wl-webrtc token`). */
  static tokenService(config: Config, env: NodeJS.ProcessEnv = process.env, log?: Logger): TokenService {
    const secret = loadOrCreateSecret(config.auth.secret_file, env, log);
    return new TokenService(secret, config.auth, TokenService.loadPublicKeys(config.auth.public_keys));
  }

  static async start(opts: AgentOptions): Promise<Agent> {
    const tokens = Agent.tokenService(opts.config, opts.env ?? process.env, opts.log);
    const agent = new Agent(opts, tokens, new Metrics(VERSION));
    try {
      await agent.#open();
    } catch (err) {
      await agent.close();
      throw err;
    }
    return agent;
  }

  async #open(): Promise<void> {
    const { config, log } = this;
    if (config.metrics.enabled) {
      this.#metricsServer = await MetricsServer.open({ host: config.metrics.host, port: config.metrics.port, metrics: this.metrics, log, allowedHosts: config.server.allowed_hosts });
    }
    this.#signaling = await SignalingServer.open({ server: config.server, signaling: config.signaling, tokens: this.tokens, metrics: this.metrics, log });
    const signaling = this.#signaling;
    this.#metricsServer?.addReadinessCheck("signaling", () => ({ ok: !signaling.closed, detail: "signaling server is closed" }));
    await this.#openDesktop();
    // The desktop's video: capture + encoder, opened on the first viewer (unless a test supplies a source).
    const desktop = this.#desktop;
    let openSource = this.#videoSource;
    if (!openSource && desktop) {
      const encodeMetrics = new EncodeMetrics([this.metrics.registry]);
      const sourceLog = log.child({ stage: "source" });
      openSource = () => DesktopVideoSource.open({ config, desktop, log: sourceLog, metrics: encodeMetrics });
    }
    if (openSource)
      this.#rtc = await RtcStage.open({ config: config.rtc, signaling, openSource, metrics: this.metrics, log: log.child({ stage: "rtc" }), env: this.#env });
    // The user's session is not ours to restart: readiness says why its video failed, until it works again.
    const rtc = this.#rtc;
    if (rtc && desktop?.kind === "session") {
      this.#metricsServer?.addReadinessCheck("video", () => ({
        ok: rtc.videoDown === undefined,
        detail: `${rtc.videoDown}; this is the user's session, which the agent does not restart (the next viewer tries again)`,
      }));
    }
  }

  /** Finds the desktop to share: the user's Wayland session, or (by config, or when none is found) our own. */
  async #openDesktop(): Promise<void> {
    this.#desktop = await openSharedDesktop(this.config.desktop, this.#env, this.log);
    const headless = this.#desktop?.headless;
    // Not ready while a part is down: restarting (it will be back) or given up (it will not).
    if (headless) this.#metricsServer?.addReadinessCheck("desktop", () => ({ ok: headless.status.state === "running", detail: headless.status.reason }));
  }

  /** The shared desktop (undefined with desktop.mode = "none"). */
  get desktop(): SharedDesktop | undefined {
    return this.#desktop;
  }

  get signaling(): SignalingServer {
    if (!this.#signaling) throw new Error("agent not started");
    return this.#signaling;
  }

  /** The streaming stage, when the agent has a video source. */
  get rtc(): RtcStage | undefined {
    return this.#rtc;
  }

  get metricsServer(): MetricsServer | undefined {
    return this.#metricsServer;
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#rtc?.close();
      await this.#signaling?.close();
      await this.#desktop?.close();
      await this.#metricsServer?.close();
    })();
    return this.#closing;
  }
}
