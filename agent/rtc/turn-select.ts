import { createTurnClient, type RTCIceServer } from "werift";
import type { Logger } from "../log/logger.js";
import { errorMessage } from "../util/errors.js";

/**
 * Which of `rtc.turn_servers` the agent's own peer connections use.
 *
 * werift (0.25.2, webrtc/src/utils.ts `parseIceServers`) takes the first TURN URL of `iceServers` and
 * ignores the others; a UDP URL that fails is retried over TCP to the same address, nothing else. With
 * a dead first server every viewer would gather no relay candidate, and its gathering (which the answer
 * and the viewer's candidates wait for) would hang on that server's timeouts. So the agent checks the
 * servers itself, in order of transport (every UDP URL, then TCP, then TLS; config order within each),
 * with a real Allocate (werift's own TURN client, closed at once), and gives werift only the first that
 * allocates. The choice is kept for `recheckMs` and then re-checked in the background (viewers meanwhile
 * keep the last good one); a viewer that gathered no relay candidate with it drops it, so the next
 * viewer checks again. When none allocates, viewers get no TURN (host and server-reflexive candidates
 * only; logged) and the check is repeated for the next viewer after `retryMs`.
 *
 * Browsers are not concerned: they get every URL (`IceServers.forBrowser`) and try them all themselves.
 */

export type TurnTransport = "udp" | "tcp" | "tls";

export interface TurnUrl {
  host: string;
  port: number;
  transport: TurnTransport;
}

/** Host, port and transport of a turn:/turns: URL (RFC 7065), as werift reads it; undefined for anything else. */
export function parseTurnUrl(url: string): TurnUrl | undefined {
  const m = /^(turns?):([^?]+)(?:\?(.*))?$/i.exec(url.trim());
  if (!m) return undefined;
  const secure = m[1]!.toLowerCase() === "turns";
  const param = new URLSearchParams(m[3] ?? "").get("transport");
  if (param !== null && param !== "udp" && param !== "tcp") return undefined;
  if (secure && param === "udp") return undefined;
  const transport: TurnTransport = secure ? "tls" : param === "tcp" ? "tcp" : "udp";
  const hp = m[2]!.replace(/^\/\//, "");
  let host: string, portText: string | undefined;
  if (hp.startsWith("[")) {
    const end = hp.indexOf("]");
    if (end < 0) return undefined;
    host = hp.slice(1, end);
    portText = hp.slice(end + 1).replace(/^:/, "") || undefined;
  } else {
    const parts = hp.split(":");
    if (parts.length > 2) return undefined;
    host = parts[0]!;
    portText = parts[1];
  }
  const port = portText === undefined ? (secure ? 5349 : 3478) : Number(portText);
  if (host === "" || !Number.isInteger(port) || port < 1 || port > 65_535) return undefined;
  return { host, port, transport };
}

const RANK: Record<TurnTransport, number> = { udp: 0, tcp: 1, tls: 2 };

/** The TURN entries of `servers` (one URL each), UDP first, then TCP, then TLS; config order within each. */
export function orderTurnServers(servers: readonly RTCIceServer[]): { server: RTCIceServer; url: string; parsed: TurnUrl }[] {
  const out: { server: RTCIceServer; url: string; parsed: TurnUrl; i: number }[] = [];
  servers.forEach((s, i) => {
    const urls = Array.isArray(s.urls) ? s.urls : [s.urls];
    for (const url of urls) {
      const parsed = parseTurnUrl(url);
      if (parsed) out.push({ server: { ...s, urls: url }, url, parsed, i });
    }
  });
  return out.sort((a, b) => RANK[a.parsed.transport] - RANK[b.parsed.transport] || a.i - b.i).map(({ server, url, parsed }) => ({ server, url, parsed }));
}

/** Allocates a relay on `server` and releases it; rejects when that does not succeed within `timeoutMs`. */
export type TurnCheck = (server: RTCIceServer, url: TurnUrl, timeoutMs: number) => Promise<void>;

export interface TurnSelectorOptions {
  log: Logger;
  /** How long one server may take to allocate (ms). */
  timeoutMs?: number;
  /** A good choice is re-checked after this long (ms). */
  recheckMs?: number;
  /** After every server failed, the next viewer checks again after this long (ms). */
  retryMs?: number;
  /** The allocation check (default: werift's TURN client); replaced in tests. */
  check?: TurnCheck;
}

export class TurnSelector {
  readonly #o: Required<TurnSelectorOptions>;
  #chosen: { url: string; at: number } | undefined;
  #allFailedAt = -Infinity;
  #checking: Promise<string | undefined> | undefined;
  #closed = false;
  readonly counters = { checks: 0, failures: 0, chosen: 0 };

  constructor(opts: TurnSelectorOptions) {
    this.#o = {
      timeoutMs: 3000, recheckMs: 60_000, retryMs: 10_000, check: allocateOnce, ...opts,
    };
  }

  /** The TURN URL viewers get now (undefined: none chosen yet, or none works). */
  get chosen(): string | undefined {
    return this.#chosen?.url;
  }

  /**
   * The ICE servers for a new peer connection: `servers` with its TURN URLs reduced to the one that
   * allocates (none when none does). Waits for a check only when there is no usable choice yet.
   */
  async select(servers: readonly RTCIceServer[], now = Date.now()): Promise<RTCIceServer[]> {
    const turn = orderTurnServers(servers);
    const others = servers.filter((s) => (Array.isArray(s.urls) ? s.urls : [s.urls]).every((u) => parseTurnUrl(u) === undefined));
    if (turn.length === 0) return [...servers];
    const listed = (url: string | undefined): (typeof turn)[number] | undefined => turn.find((t) => t.url === url);
    let pick = listed(this.#chosen?.url);
    if (pick && now - this.#chosen!.at >= this.#o.recheckMs) void this.#check(turn); // in the background
    if (!pick && (this.#checking || now - this.#allFailedAt >= this.#o.retryMs)) pick = listed(await this.#check(turn));
    return pick ? [...others, pick.server] : others;
  }

  /** A viewer gathered no relay candidate with `url`: forget it, the next viewer checks again. */
  failed(url: string): void {
    if (this.#chosen?.url !== url) return;
    this.#o.log.warn({ url }, "the chosen TURN server gave a viewer no relay candidate: checking the servers again for the next one");
    this.#chosen = undefined;
  }

  close(): void {
    this.#closed = true;
  }

  #check(turn: ReturnType<typeof orderTurnServers>): Promise<string | undefined> {
    this.#checking ??= (async () => {
      const failed: { url: string; err: string }[] = [];
      try {
        for (const t of turn) {
          if (this.#closed) return undefined;
          this.counters.checks++;
          try {
            await this.#o.check(t.server, t.parsed, this.#o.timeoutMs);
          } catch (err) {
            this.counters.failures++;
            failed.push({ url: t.url, err: errorMessage(err) });
            this.#o.log.warn({ url: t.url, err: errorMessage(err) }, "TURN server could not allocate a relay; trying the next one");
            continue;
          }
          if (this.#chosen?.url !== t.url) {
            this.counters.chosen++;
            this.#o.log.info({ url: t.url, skipped: failed.map((f) => f.url) }, "TURN server chosen for the agent's relay candidates");
          }
          this.#chosen = { url: t.url, at: Date.now() };
          return t.url;
        }
        this.#chosen = undefined;
        this.#allFailedAt = Date.now();
        this.#o.log.warn({ failed }, "no TURN server of rtc.turn_servers could allocate a relay: viewers get host and server-reflexive candidates only (checked again in a while)");
        return undefined;
      } finally {
        this.#checking = undefined;
      }
    })();
    return this.#checking;
  }
}

/**
 * The default check: a real Allocate with werift's TURN client, released at once. Its UDP socket takes an
 * ephemeral port, not one of rtc.udp_port_min..max: a check that times out keeps its socket until
 * werift's own retransmissions give up (~6 s), which must not cost a viewer its port.
 */
async function allocateOnce(server: RTCIceServer, url: TurnUrl, timeoutMs: number): Promise<void> {
  if (typeof server.username !== "string" || typeof server.credential !== "string") throw new Error("no TURN credentials");
  const pending = createTurnClient(
    { address: [url.host, url.port], username: server.username, password: server.credential },
    { transport: url.transport, connectTimeoutMs: timeoutMs },
  );
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no allocation within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    const client = await Promise.race([pending, timeout]);
    await client.close().catch(() => undefined);
  } catch (err) {
    // A late success still holds an allocation and a socket: release them when it comes.
    pending.then((c) => c.close(), () => undefined).catch(() => undefined);
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
