import type { Config } from "./config/schema.js";
import type { Logger } from "./log/logger.js";
import { Metrics } from "./metrics/metrics.js";
import { MetricsServer } from "./metrics/server.js";
import { TokenService } from "./auth/tokens.js";
import { loadOrCreateSecret } from "./auth/secret.js";
import { SignalingServer } from "./signaling/server.js";
import { VERSION } from "./version.js";

export interface AgentOptions {
  config: Config;
  log: Logger;
  env?: NodeJS.ProcessEnv;
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
  #closing: Promise<void> | undefined;

  private constructor(opts: AgentOptions, tokens: TokenService, metrics: Metrics) {
    this.config = opts.config;
    this.log = opts.log;
    this.tokens = tokens;
    this.metrics = metrics;
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
      this.#metricsServer = await MetricsServer.open({ host: config.metrics.host, port: config.metrics.port, metrics: this.metrics, log });
    }
    this.#signaling = await SignalingServer.open({ server: config.server, signaling: config.signaling, tokens: this.tokens, metrics: this.metrics, log });
    const signaling = this.#signaling;
    this.#metricsServer?.addReadinessCheck("signaling", () => ({ ok: !signaling.closed, detail: "signaling server is closed" }));
  }

  get signaling(): SignalingServer {
    if (!this.#signaling) throw new Error("agent not started");
    return this.#signaling;
  }

  get metricsServer(): MetricsServer | undefined {
    return this.#metricsServer;
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#signaling?.close();
      await this.#metricsServer?.close();
    })();
    return this.#closing;
  }
}
