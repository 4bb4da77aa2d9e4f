import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseConfig } from "../../agent/config/load.js";
import type { Config } from "../../agent/config/schema.js";
import { Agent } from "../../agent/agent.js";
import { silentLogger } from "../../agent/log/logger.js";

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? (T[K] extends unknown[] ? T[K] : DeepPartial<T[K]>) : T[K] };

/** A config for tests: free ports, a private state dir, no secret from the environment. */
export function testConfig(overrides: DeepPartial<Config> = {}): { config: Config; stateDir: string; cleanup: () => void } {
  const stateDir = mkdtempSync(join(tmpdir(), "wl-webrtc-test-"));
  const base = parseConfig({}, "(test)");
  const merged = merge(base, overrides) as Config;
  merged.state_dir = stateDir;
  merged.server.port = overrides.server?.port ?? 0;
  merged.metrics.port = overrides.metrics?.port ?? 0;
  merged.log.level = overrides.log?.level ?? "silent";
  // Signaling-level tests need no desktop; tests that do ask for one.
  merged.desktop.mode = overrides.desktop?.mode ?? "none";
  // Media stays on loopback unless a test puts it on a link of its own (TestBrowser.agentOverrides()):
  // by default werift would offer, and send from, the machine's LAN address.
  merged.rtc.ice_host_addresses = overrides.rtc?.ice_host_addresses ?? ["127.0.0.1"];
  merged.auth.secret_file = join(stateDir, "secret.key");
  merged.auth.revocation_file = join(stateDir, "revoked-jti");
  return { config: merged, stateDir, cleanup: () => rmSync(stateDir, { recursive: true, force: true }) };
}

function merge(a: unknown, b: unknown): unknown {
  if (b === undefined) return a;
  if (a === null || typeof a !== "object" || Array.isArray(a) || b === null || typeof b !== "object" || Array.isArray(b)) return b;
  const out: Record<string, unknown> = { ...(a as Record<string, unknown>) };
  for (const [k, v] of Object.entries(b as Record<string, unknown>)) out[k] = merge(out[k], v);
  return out;
}

export interface TestAgent {
  agent: Agent;
  config: Config;
  wsUrl: string;
  httpUrl: string;
  close: () => Promise<void>;
}

/** Starts a real agent on loopback with free ports. */
export async function startTestAgent(overrides: DeepPartial<Config> = {}): Promise<TestAgent> {
  const { config, cleanup } = testConfig(overrides);
  const agent = await Agent.start({ config, log: silentLogger(), env: {} });
  const httpUrl = agent.signaling.url;
  return {
    agent,
    config,
    httpUrl,
    wsUrl: `${httpUrl.replace(/^http/, "ws")}/signal`,
    close: async () => {
      await agent.close();
      cleanup();
    },
  };
}
