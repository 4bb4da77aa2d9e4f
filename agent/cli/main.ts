#!/usr/bin/env node
import { parseArgs, type ParseArgsConfig } from "node:util";
import { stringify as stringifyToml } from "smol-toml";
import { loadConfig } from "../config/load.js";
import type { Config } from "../config/schema.js";
import { createLogger } from "../log/logger.js";
import { Agent } from "../agent.js";
import { parseTtl, type Role } from "../auth/tokens.js";
import { ConfigError, UnsupportedError, WlError, errorMessage } from "../util/errors.js";
import { setListenerErrorHook } from "../util/events.js";
import { VERSION } from "../version.js";
import { ExitCode } from "./exit-codes.js";

const HELP = `wl-webrtc ${VERSION}: your Wayland desktop in a web browser, over WebRTC.

Usage:
  wl-webrtc serve [--config FILE] [--headless] [--print-url]
      Run the agent. --headless: on its own headless desktop even if a Wayland session exists.
      --print-url: print the web client's URL with a fresh control token on stderr.
  wl-webrtc token --role view|control [--ttl SECONDS|10m|2h] [--subject NAME] [--config FILE]
      Mint a signaling token; prints only the token.
  wl-webrtc revoke JTI [--config FILE]
      Revoke a token by its id (jti); a running agent honours it at the next connection.
  wl-webrtc capture-test [--seconds N] [--json] [--snapshot FILE.png] [--headless [--animate]] [--config FILE]
      Ask the portal for the screen, capture for N seconds (default 5), print fps, size, format, buffer
      type and damage; --json: the last line is one JSON object. --animate: on a headless desktop, run a
      terminal that scrolls text.
  wl-webrtc probe [--json] [--config FILE]
      What this machine can do: the native addon, the H.264 encoders (each available or why not, and
      which one [encode] backends would pick).
  wl-webrtc config check [FILE]
      Validate a configuration file (default: $XDG_CONFIG_HOME/wl-webrtc/config.toml) and print the
      effective configuration.
  wl-webrtc --help | --version

Exit codes: 0 ok, 1 failure while running, 2 bad command line, 3 bad configuration,
4 something needed is missing on this machine.
`;

class UsageError extends Error {}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case "--help":
    case "-h":
    case "help":
      process.stdout.write(HELP);
      return command === undefined ? ExitCode.usage : ExitCode.ok;
    case "--version":
    case "-V":
      process.stdout.write(`${VERSION}\n`);
      return ExitCode.ok;
    case "serve":
      return serve(rest);
    case "token":
      return token(rest);
    case "revoke":
      return revoke(rest);
    case "config":
      return configCommand(rest);
    case "capture-test":
      return captureTestCommand(rest);
    case "probe":
      return probeCommand(rest);
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  }
}

function parse<T extends ParseArgsConfig["options"]>(args: string[], options: T, allowPositionals = false) {
  try {
    return parseArgs({ args, options: { ...options, help: { type: "boolean", short: "h" } }, allowPositionals, strict: true });
  } catch (err) {
    throw new UsageError(errorMessage(err));
  }
}

async function serve(args: string[]): Promise<number> {
  const { values } = parse(args, {
    config: { type: "string", short: "c" },
    headless: { type: "boolean" },
    "print-url": { type: "boolean" },
  });
  if (values.help) return help();
  const { config, file } = loadConfig(values.config as string | undefined);
  if (values.headless) config.desktop.mode = "headless";
  const log = createLogger({ level: config.log.level, pretty: config.log.pretty });
  setListenerErrorHook((event, err) => log.error({ err, event }, "an event listener threw"));
  log.info({ version: VERSION, config: file ?? "(defaults)", node: process.version }, "starting");
  const agent = await Agent.start({ config, log });
  if (values["print-url"]) {
    const { token: t } = await agent.tokens.mint({ role: "control", ttlS: config.auth.default_ttl_s, subject: "local" });
    process.stderr.write(`\nOpen ${agent.signaling.url}/#token=${t}\n(a control token, valid ${config.auth.default_ttl_s} s)\n\n`);
  }
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, "stopping");
      agent.close().then(
        () => {
          log.info("stopped");
          log.flush();
          resolve(ExitCode.ok);
        },
        (err: unknown) => {
          log.error({ err }, "error while stopping");
          log.flush();
          resolve(ExitCode.failure);
        },
      );
    };
    process.once("SIGTERM", () => stop("SIGTERM"));
    process.once("SIGINT", () => stop("SIGINT"));
  });
}

async function token(args: string[]): Promise<number> {
  const { values } = parse(args, {
    role: { type: "string" },
    ttl: { type: "string" },
    subject: { type: "string" },
    config: { type: "string", short: "c" },
  });
  if (values.help) return help();
  const role = values.role as string | undefined;
  if (role !== "view" && role !== "control") throw new UsageError("--role: expected view or control");
  const { config } = loadConfig(values.config as string | undefined);
  let ttlS = config.auth.default_ttl_s;
  if (values.ttl !== undefined) {
    try {
      ttlS = parseTtl(values.ttl as string);
    } catch (err) {
      throw new UsageError(`--ttl: ${errorMessage(err)}`);
    }
  }
  if (ttlS < 1 || ttlS > config.auth.max_ttl_s) throw new UsageError(`--ttl: expected 1..${config.auth.max_ttl_s} seconds (auth.max_ttl_s), found ${ttlS}`);
  const subject = (values.subject as string | undefined) ?? process.env.USER ?? "user";
  const tokens = Agent.tokenService(config);
  const { token: t } = await tokens.mint({ role: role as Role, ttlS, subject });
  process.stdout.write(`${t}\n`);
  return ExitCode.ok;
}

async function revoke(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { config: { type: "string", short: "c" } }, true);
  if (values.help) return help();
  if (positionals.length !== 1) throw new UsageError("revoke: expected one token id (the jti claim)");
  const { config } = loadConfig(values.config as string | undefined);
  const tokens = Agent.tokenService(config);
  try {
    tokens.revocations.add(positionals[0]!);
  } catch (err) {
    throw new UsageError(errorMessage(err));
  }
  process.stderr.write(`revoked ${positionals[0]!} (in ${tokens.revocations.file})\n`);
  return ExitCode.ok;
}

async function configCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub !== "check") throw new UsageError(`config: expected "check", found ${JSON.stringify(sub ?? "")}`);
  const { values, positionals } = parse(rest, {}, true);
  if (values.help) return help();
  if (positionals.length > 1) throw new UsageError("config check: expected at most one file");
  const { config, file } = loadConfig(positionals[0]);
  process.stderr.write(`${file ?? "no configuration file found; defaults"}: ok\n`);
  process.stdout.write(renderConfig(config));
  return ExitCode.ok;
}

async function probeCommand(args: string[]): Promise<number> {
  const { values } = parse(args, { json: { type: "boolean" }, config: { type: "string", short: "c" } });
  if (values.help) return help();
  const { config } = loadConfig(values.config as string | undefined);
  const { probeEncoders, formatProbes, firstAvailable, chooseDmabufCapture } = await import("../encode/probe.js");
  const probes = probeEncoders();
  const chosen = firstAvailable(probes, config.encode.backends);
  const dmabuf = chooseDmabufCapture(probes, config.encode.backends);
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ encoders: probes, chosen: chosen ?? null, priority: config.encode.backends, dmabuf })}\n`);
  } else {
    process.stdout.write(`${formatProbes(probes)}\n`);
    process.stdout.write(chosen ? `encoder: ${chosen} (first available of [encode] backends = ${JSON.stringify(config.encode.backends)})\n` : `encoder: none of ${JSON.stringify(config.encode.backends)} is available here\n`);
    process.stdout.write(dmabuf.device !== null ? `capture: DMA-BUF (zero copy) on ${dmabuf.device}\n` : `capture: ${dmabuf.reason}\n`);
  }
  return chosen ? ExitCode.ok : ExitCode.unsupported;
}

async function captureTestCommand(args: string[]): Promise<number> {
  const { values } = parse(args, {
    seconds: { type: "string" },
    json: { type: "boolean" },
    snapshot: { type: "string" },
    headless: { type: "boolean" },
    animate: { type: "boolean" },
    config: { type: "string", short: "c" },
  });
  if (values.help) return help();
  const seconds = values.seconds === undefined ? 5 : Number(values.seconds);
  if (!Number.isFinite(seconds) || seconds <= 0 || seconds > 3600) throw new UsageError("--seconds: expected a number of seconds in (0, 3600]");
  if (values.animate && !values.headless) throw new UsageError("--animate needs --headless");
  const { config } = loadConfig(values.config as string | undefined);
  if (values.headless) config.desktop.mode = "headless";
  // Logs go to stderr: stdout carries the result.
  const log = createLogger({ level: config.log.level === "info" ? "warn" : config.log.level, pretty: config.log.pretty, destination: process.stderr });
  setListenerErrorHook((event, err) => log.error({ err, event }, "an event listener threw"));
  const { captureTest } = await import("./capture-test.js");
  await captureTest(config, { seconds, json: values.json === true, snapshot: values.snapshot as string | undefined, animate: values.animate === true }, log);
  return ExitCode.ok;
}

function renderConfig(config: Config): string {
  return `${stringifyToml(config)}\n`;
}

function help(): number {
  process.stdout.write(HELP);
  return ExitCode.ok;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof UsageError) {
      process.stderr.write(`wl-webrtc: ${err.message}\nTry 'wl-webrtc --help'.\n`);
      process.exitCode = ExitCode.usage;
    } else if (err instanceof ConfigError) {
      process.stderr.write(`wl-webrtc: configuration error:\n${err.problems.map((p) => `  ${p}`).join("\n")}\n`);
      process.exitCode = ExitCode.config;
    } else if (err instanceof UnsupportedError) {
      process.stderr.write(`wl-webrtc: ${err.message}\n`);
      process.exitCode = ExitCode.unsupported;
    } else if (err instanceof WlError && err.code === "usage") {
      process.stderr.write(`wl-webrtc: ${err.message}\n`);
      process.exitCode = ExitCode.usage;
    } else if (err instanceof WlError && err.code === "config") {
      process.stderr.write(`wl-webrtc: configuration error:\n  ${err.message}\n`);
      process.exitCode = ExitCode.config;
    } else {
      process.stderr.write(`wl-webrtc: ${errorMessage(err)}\n`);
      process.exitCode = ExitCode.failure;
    }
  },
);
