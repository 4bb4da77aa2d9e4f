import { isIPv4, isIPv6 } from "node:net";

/**
 * Checks the Host header of every request against the names the agent is reachable by, against DNS
 * rebinding: a page on an attacker's name that resolves to this machine is same-origin with itself, so
 * its Origin matches its Host and the Origin check alone lets it in. Accepted:
 * - IP literals (127.0.0.1, [::1], a LAN address): a browser sends one only when the user typed that
 *   address, and no DNS answer can turn an attacker's page into one;
 * - `localhost` (browsers resolve it themselves; a trailing dot is ignored);
 * - the configured `server.host` (or `metrics.host`) when it is a name;
 * - every name in `server.allowed_hosts` (`"*"` turns the check off).
 * The port in Host is not compared: the name is what an attacker controls, and a reverse proxy may
 * forward another port.
 */
export class HostCheck {
  readonly #names: Set<string>;
  readonly #any: boolean;

  constructor(allowedHosts: readonly string[], boundHost: string) {
    this.#any = allowedHosts.includes("*");
    this.#names = new Set(["localhost", ...allowedHosts, boundHost].map(normalizeName));
  }

  /** undefined when `header` names this agent; else the reason for a refusal (one line, for the client). */
  refusal(header: string | undefined): string | undefined {
    if (this.#any) return undefined;
    if (header === undefined || header === "") return "host: no Host header";
    const name = hostName(header);
    if (name !== undefined && (isIPv4(name) || isIPv6(name) || this.#names.has(normalizeName(name)))) return undefined;
    const shown = JSON.stringify(header.slice(0, 100));
    return `host: ${shown} is not a name of this agent (DNS rebinding?); if it is one, add it to server.allowed_hosts`;
  }
}

/** The name part of a Host header ("name:port", "[v6]:port", "name"); undefined when it is not one. */
function hostName(header: string): string | undefined {
  if (header.startsWith("[")) {
    const end = header.indexOf("]");
    if (end < 0) return undefined;
    const rest = header.slice(end + 1);
    if (rest !== "" && !/^:\d{1,5}$/.test(rest)) return undefined;
    return header.slice(1, end);
  }
  const m = /^([^:]+)(?::\d{1,5})?$/.exec(header);
  return m?.[1];
}

function normalizeName(name: string): string {
  const n = name.toLowerCase();
  return n.endsWith(".") ? n.slice(0, -1) : n;
}
