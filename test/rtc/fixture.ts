import { Agent } from "../../agent/agent.js";
import { silentLogger } from "../../agent/log/logger.js";
import type { EncodedVideoSource } from "../../agent/encode/types.js";
import type { Config } from "../../agent/config/schema.js";
import { testConfig } from "../helpers/agent.js";
import { X264TestSource, type X264SourceOptions } from "../helpers/x264-source.js";

/**
 * A real agent on loopback whose rtc stage streams a real encoder's output. The source is swappable:
 * today ffmpeg/x264 (X264TestSource); once the capture+encode pipeline exists, pass its factory instead.
 */
export interface RtcFixture {
  agent: Agent;
  config: Config;
  httpUrl: string;
  wsUrl: string;
  /** Every source the stage opened, newest last. */
  sources: X264TestSource[];
  source(): X264TestSource;
  token(role: "view" | "control", ttl?: number): Promise<string>;
  close(): Promise<void>;
}

type Overrides = Parameters<typeof testConfig>[0];

export async function startRtcAgent(overrides: Overrides = {}, sourceOptions: X264SourceOptions = {}, factory?: () => Promise<EncodedVideoSource>): Promise<RtcFixture> {
  const { config, cleanup } = testConfig({ desktop: { mode: "none" }, metrics: { enabled: false }, ...overrides });
  const sources: X264TestSource[] = [];
  const videoSource = factory ?? (async () => {
    const s = await X264TestSource.open(sourceOptions);
    sources.push(s);
    return s;
  });
  const agent = await Agent.start({ config, log: silentLogger(), env: {}, videoSource });
  const httpUrl = agent.signaling.url;
  return {
    agent,
    config,
    httpUrl,
    wsUrl: `${httpUrl.replace(/^http/, "ws")}/signal`,
    sources,
    source: () => {
      const s = sources[sources.length - 1];
      if (!s) throw new Error("no source opened yet");
      return s;
    },
    token: async (role, ttl = 600) => (await agent.tokens.mint({ role, subject: "test", ttlS: ttl })).token,
    close: async () => {
      await agent.close();
      for (const s of sources) await s.close();
      cleanup();
    },
  };
}
