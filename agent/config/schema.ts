import { z } from "zod";

/**
 * The whole configuration, one section per pipeline stage. Every key has a default, so an empty file
 * (or none) is a valid configuration; unknown keys are errors so that a typo never passes silently.
 * `config/wl-webrtc.toml` lists every key with its default: keep the two in step (a test checks it).
 */
const portOrZero = z.number().int().min(0).max(65535);
const positiveInt = z.number().int().min(1);
const host = z.string().min(1);

const logSection = z.strictObject({
  level: z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]).default("info"),
  pretty: z.enum(["auto", "always", "never"]).default("auto"),
});

const serverSection = z.strictObject({
  host: host.default("127.0.0.1"),
  /** 0 picks a free port (tests). */
  port: portOrZero.default(8780),
  tls_cert: z.string().default(""),
  tls_key: z.string().default(""),
  /** Origins allowed to open the signaling WebSocket, e.g. "https://desk.example.org". Empty: same origin only. */
  allowed_origins: z.array(z.string().regex(/^(https?:\/\/[^/\s]+|\*)$/, "an origin like https://host:port, or *")).default([]),
  /**
   * Host names (besides localhost, IP literals and `host` itself) that browsers may use to reach the agent,
   * e.g. "desk.example.org" behind a reverse proxy. Any other Host header is refused (421): a page on a
   * name that an attacker made resolve to this machine (DNS rebinding) gets nothing. "*": no check.
   */
  allowed_hosts: z.array(z.string().regex(/^(\*|[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?)$/, "a host name like desk.example.org (no scheme, no port), or *")).default([]),
  /** Directory of the web client's static files. Empty: the bundled web-client/dist. */
  web_root: z.string().default(""),
});

const signalingSection = z
  .strictObject({
    hello_timeout_ms: z.number().int().min(100).max(120_000).default(5000),
    max_message_bytes: z.number().int().min(1024).max(16 * 1024 * 1024).default(64 * 1024),
    messages_per_second: z.number().min(1).max(100_000).default(50),
    message_burst: positiveInt.max(100_000).default(200),
    /** Bad messages tolerated (each answered with an error) before the connection is closed. */
    max_bad_messages: positiveInt.max(10_000).default(20),
    max_sessions: positiveInt.max(10_000).default(32),
    /** New connections per remote address: sustained rate per second and burst. */
    connections_per_second_per_address: z.number().min(0.01).max(10_000).default(2),
    connection_burst_per_address: positiveInt.max(100_000).default(20),
    /** A connection that answers no ping for this long is dropped. */
    idle_timeout_ms: z.number().int().min(1000).max(3_600_000).default(30_000),
    /**
     * WebSockets that have not been welcomed yet (no hello, or a token being checked), in all: a budget of
     * their own beside max_sessions, so silent connections never take an authenticated session's room.
     */
    max_pending: positiveInt.max(10_000).default(16),
    /** Of those, from one source address (an IPv4 address; an IPv6 /64). docs/protocol.md "Admission". */
    max_pending_per_address: positiveInt.max(10_000).default(4),
  })
  .superRefine((s, ctx) => {
    if (s.max_pending_per_address > s.max_pending)
      ctx.addIssue({ code: "custom", path: ["max_pending_per_address"], message: "expected max_pending_per_address <= max_pending" });
  });

const authSection = z.strictObject({
  audience: z.string().min(1).default("wl-webrtc"),
  /** HS256 secret file; empty: <state_dir>/secret.key, created on first run. WL_WEBRTC_SECRET overrides. */
  secret_file: z.string().default(""),
  /** Ed25519 public keys (SPKI PEM files) whose EdDSA tokens are also accepted. */
  public_keys: z.array(z.string().min(1)).default([]),
  /** Revoked token ids (jti), one per line; empty: <state_dir>/revoked-jti. */
  revocation_file: z.string().default(""),
  default_ttl_s: positiveInt.max(31 * 24 * 3600).default(3600),
  max_ttl_s: positiveInt.max(366 * 24 * 3600).default(24 * 3600),
  clock_tolerance_s: z.number().int().min(0).max(300).default(5),
});

const metricsSection = z.strictObject({
  enabled: z.boolean().default(true),
  host: host.default("127.0.0.1"),
  port: portOrZero.default(9464),
});

const desktopSection = z.strictObject({
  /** auto: the user's Wayland session if one is found, else our own headless desktop; none: share no desktop (cameras only). */
  mode: z.enum(["auto", "session", "headless", "none"]).default("auto"),
  width: z.number().int().min(64).max(7680).default(1920),
  height: z.number().int().min(64).max(4320).default(1080),
  refresh_hz: z.number().int().min(1).max(240).default(60),
  /**
   * Headless desktop only: a part that dies (PipeWire, sway, the portal, ...) is restarted with what
   * depends on it, at most this many times within restart_window_s; one more death gives up (the desktop
   * stays down, /readyz says why). 0: never restart.
   */
  restart_limit: z.number().int().min(0).max(100).default(5),
  restart_window_s: z.number().int().min(1).max(86_400).default(300),
});

const captureSection = z.strictObject({
  source_types: z.array(z.enum(["monitor", "window", "virtual"])).min(1).default(["monitor"]),
  /**
   * auto: metadata where the portal offers it (the pointer is sent on the control channel and drawn by
   * the client, ahead of the video), else embedded (drawn into the video). xdpw 0.7 offers hidden and
   * embedded only.
   */
  cursor_mode: z.enum(["auto", "hidden", "embedded", "metadata"]).default("auto"),
  /** Keep the portal's restore token so the user is asked once. */
  persist: z.boolean().default(true),
  /** Edge of the square tiles compared when the compositor sends no damage. */
  damage_tile_size: z.number().int().min(8).max(512).default(64),
});

const encodeSection = z.strictObject({
  /** Tried in this order; the first that opens wins, and a failing one falls back to the next. */
  backends: z.array(z.enum(["vaapi", "nvenc", "x264", "openh264"])).min(1).default(["vaapi", "nvenc", "x264", "openh264"]),
  bitrate_kbps: z.number().int().min(100).max(200_000).default(6000),
  max_fps: z.number().int().min(1).max(240).default(60),
  /** H.264 profile; both are in every browser's receive list (42e0xx / 4d00xx). High is not (Chromium). */
  profile: z.enum(["constrained_baseline", "main"]).default("constrained_baseline"),
  /** x264 speed preset (the other backends ignore it). */
  preset: z.enum(["ultrafast", "superfast", "veryfast"]).default("ultrafast"),
  /** Re-encode the last frame when the screen was static this long, for late joiners and lossy links. 0: never. */
  refresh_interval_ms: z.number().int().min(0).max(60_000).default(1000),
  /**
   * Once a refresh comes out converged (nearly all macroblocks skipped), each further one waits twice
   * as long, up to this; any change resets it. At or below refresh_interval_ms: a constant interval.
   */
  refresh_max_interval_ms: z.number().int().min(0).max(600_000).default(8000),
  /** Periodic intra refresh instead of whole IDR frames when recovering (x264, nvenc, vaapi). */
  intra_refresh: z.boolean().default(false),
  /** Better quality where the screen changed (region-of-interest side data, where the backend has it). */
  damage_roi: z.boolean().default(false),
  /** Keyframe requests closer together than this are merged into one. */
  keyframe_min_interval_ms: z.number().int().min(0).max(10_000).default(500),
});

const iceUrl = z.string().regex(/^(stun|stuns|turn|turns):[^\s]+$/, "a URL like stun:host:port or turn:host:port?transport=udp");
const rtcSection = z
  .strictObject({
    /** STUN servers for server-reflexive candidates, e.g. "stun:stun.example.org:3478". Empty: host candidates only. */
    stun_servers: z.array(iceUrl).default([]),
    /** TURN servers (relay), e.g. "turn:turn.example.org:3478?transport=udp". */
    turn_servers: z.array(iceUrl).default([]),
    turn_username: z.string().default(""),
    /** Absolute path of a file holding the TURN password. WL_WEBRTC_TURN_PASSWORD overrides it. Never on the command line. */
    turn_password_file: z.string().regex(/^(\/.*)?$/, "an absolute path, or empty").default(""),
    /**
     * Absolute path of a file holding the TURN server's shared secret (coturn `static-auth-secret`, the
     * "TURN REST API" scheme). WL_WEBRTC_TURN_SECRET overrides it. When set, the agent and every browser get
     * short-lived credentials made from it (user "<expiry>:<name>", password HMAC-SHA1), and
     * turn_username / the TURN password are not used. Without it, browsers get no TURN servers.
     */
    turn_secret_file: z.string().regex(/^(\/.*)?$/, "an absolute path, or empty").default(""),
    /** Lifetime of those credentials, seconds (a session that outlives them cannot renew its relay). */
    turn_credential_ttl_s: z.number().int().min(60).max(7 * 86_400).default(86_400),
    /**
     * Local addresses to gather ICE host candidates on (IPv4 or IPv6 literals). Empty: every address of
     * every interface that werift finds (loopback excluded). Set it to keep media on one interface (a VPN,
     * one LAN); the agent then neither offers nor sends from any other local address.
     */
    ice_host_addresses: z.array(z.ipv4().or(z.ipv6())).default([]),
    /** UDP ports for ICE; 0 and 0: any free port. */
    udp_port_min: portOrZero.default(0),
    udp_port_max: portOrZero.default(0),
    /** Per-viewer bitrate bounds and start value, bits per second. */
    max_bitrate_bps: z.number().int().min(100_000).max(200_000_000).default(8_000_000),
    min_bitrate_bps: z.number().int().min(50_000).max(200_000_000).default(300_000),
    start_bitrate_bps: z.number().int().min(50_000).max(200_000_000).default(2_000_000),
    /** Keyframe requests (PLI, FIR, new viewers) closer together than this are merged into one. */
    keyframe_min_interval_ms: z.number().int().min(0).max(60_000).default(1000),
    /** Sent packets kept for NACK retransmission, as time at max_bitrate_bps. */
    nack_history_ms: z.number().int().min(100).max(10_000).default(500),
    /** Playout-delay header extension: ask the browser to buffer this little (0 and 0: render at once). */
    playout_delay_min_ms: z.number().int().min(0).max(40_950).default(0),
    playout_delay_max_ms: z.number().int().min(0).max(40_950).default(0),
    /** Largest RTP payload; keep below the path MTU minus IP, UDP, SRTP and TURN overhead. */
    max_payload_bytes: z.number().int().min(500).max(1400).default(1200),
    /** A second, smaller encoder ("low rung") for viewers much slower than the fastest one (docs/streaming.md). */
    low_rung: z.boolean().default(true),
    /** The low rung's picture as a fraction of the desktop's (each dimension, rounded down to even). */
    low_rung_scale: z.number().min(0.1).max(0.9).default(0.5),
    /** A viewer whose target stays under this fraction of the main rung's for low_rung_down_ms moves down. */
    low_rung_down_ratio: z.number().min(0.05).max(0.95).default(0.5),
    low_rung_down_ms: z.number().int().min(0).max(60_000).default(2000),
    /** A low-rung viewer whose target stays over this fraction of the main rung's for low_rung_up_ms moves back up. */
    low_rung_up_ratio: z.number().min(0.1).max(1).default(0.8),
    low_rung_up_ms: z.number().int().min(0).max(60_000).default(3000),
    /** A viewer is not moved down in its first milliseconds (its bitrate is still ramping up). */
    low_rung_join_grace_ms: z.number().int().min(0).max(60_000).default(4000),
    /** The low rung's encoder is closed this long after its last viewer left it. */
    low_rung_linger_ms: z.number().int().min(0).max(600_000).default(5000),
    /**
     * The desktop's capture and encoder (and its portal session) close this long after the last viewer
     * left: a reload within it reconnects to the running stream; after it, nothing is captured.
     */
    source_linger_ms: z.number().int().min(0).max(600_000).default(5000),
  })
  .superRefine((r, ctx) => {
    if ((r.udp_port_min === 0) !== (r.udp_port_max === 0) || r.udp_port_min > r.udp_port_max || (r.udp_port_min !== 0 && r.udp_port_min === r.udp_port_max))
      ctx.addIssue({ code: "custom", path: ["udp_port_max"], message: "expected udp_port_min < udp_port_max, or both 0" });
    if (!(r.min_bitrate_bps <= r.start_bitrate_bps && r.start_bitrate_bps <= r.max_bitrate_bps))
      ctx.addIssue({ code: "custom", path: ["start_bitrate_bps"], message: "expected min_bitrate_bps <= start_bitrate_bps <= max_bitrate_bps" });
    if (r.low_rung_up_ratio <= r.low_rung_down_ratio)
      ctx.addIssue({ code: "custom", path: ["low_rung_up_ratio"], message: "expected low_rung_down_ratio < low_rung_up_ratio (hysteresis)" });
    if (r.playout_delay_min_ms > r.playout_delay_max_ms)
      ctx.addIssue({ code: "custom", path: ["playout_delay_max_ms"], message: "expected playout_delay_min_ms <= playout_delay_max_ms" });
  });

export const configSchema = z.strictObject({
  /** Where the secret, the restore token and the revocation list live. Empty: $XDG_STATE_HOME/wl-webrtc. */
  state_dir: z.string().default(""),
  log: logSection.prefault({}),
  server: serverSection.prefault({}),
  signaling: signalingSection.prefault({}),
  auth: authSection.prefault({}),
  metrics: metricsSection.prefault({}),
  desktop: desktopSection.prefault({}),
  capture: captureSection.prefault({}),
  encode: encodeSection.prefault({}),
  rtc: rtcSection.prefault({}),
});

export type Config = z.infer<typeof configSchema>;
export type ServerConfig = Config["server"];
export type SignalingConfig = Config["signaling"];
export type AuthConfig = Config["auth"];
export type MetricsConfig = Config["metrics"];
export type DesktopConfig = Config["desktop"];
export type CaptureConfig = Config["capture"];
export type EncodeConfig = Config["encode"];
export type RtcConfig = Config["rtc"];
