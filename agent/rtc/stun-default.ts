import { Connection } from "werift";

/**
 * werift 0.25 gives every ICE connection a STUN server when none is configured: stun.l.google.com:19302
 * (ice `Connection.applyStunTurnServersFromOptions`, DEFAULT_STUN_SERVER), even for `iceServers: []`. Every
 * viewer then made the agent look that name up and send binding requests to Google's server: traffic to
 * a third party the user never configured. The agent gathers server-reflexive candidates only from
 * `rtc.stun_servers`; with none, none.
 *
 * Installed once per process (idempotent), before the first peer connection.
 */
type ConnectionLike = { options: { stunServer?: unknown }; stunServer: unknown };

let installed = false;

export function noDefaultStunServer(): void {
  if (installed) return;
  const proto = Connection.prototype as unknown as { applyStunTurnServersFromOptions?: (this: ConnectionLike) => void };
  const original = proto.applyStunTurnServersFromOptions;
  if (typeof original !== "function") throw new Error("werift's ICE Connection has no applyStunTurnServersFromOptions(): check that it still defaults to a public STUN server");
  proto.applyStunTurnServersFromOptions = function (this: ConnectionLike): void {
    original.call(this);
    if (this.options.stunServer === undefined) this.stunServer = undefined;
  };
  installed = true;
}
