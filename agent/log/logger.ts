import { pino, type Logger, type LoggerOptions } from "pino";

export type { Logger };
export type LogLevel = "trace" | "debug" | "info" | "warn" | "error" | "fatal" | "silent";

/**
 * Paths whose values never reach a log line. Tokens and secrets are redacted wherever they appear in
 * a logged object; code also never puts them in messages.
 */
export const REDACT_PATHS = [
  "token",
  "*.token",
  "secret",
  "*.secret",
  "password",
  "*.password",
  "authorization",
  "*.authorization",
  "headers.authorization",
  "*.headers.authorization",
  'headers["sec-websocket-protocol"]',
  '*.headers["sec-websocket-protocol"]',
  "restoreToken",
  "*.restoreToken",
  "restore_token",
  "*.restore_token",
];

export interface LoggerSettings {
  level: LogLevel;
  /** auto: human-readable when stdout is a TTY, JSON otherwise (journald). */
  pretty: "auto" | "always" | "never";
  /** Write here instead of stdout (tests). */
  destination?: NodeJS.WritableStream;
}

export function createLogger(settings: LoggerSettings): Logger {
  const options: LoggerOptions = {
    level: settings.level,
    base: { pid: process.pid },
    redact: { paths: REDACT_PATHS, censor: "[redacted]" },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  const pretty =
    settings.pretty === "always" || (settings.pretty === "auto" && settings.destination === undefined && process.stdout.isTTY);
  if (pretty) {
    return pino({
      ...options,
      transport: { target: "pino-pretty", options: { colorize: true, translateTime: "SYS:HH:MM:ss.l", ignore: "pid,hostname" } },
    });
  }
  if (settings.destination) return pino(options, settings.destination);
  return pino(options, pino.destination({ dest: 1, sync: false }));
}

/** A logger that drops everything: for library use and tests that do not look at logs. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
