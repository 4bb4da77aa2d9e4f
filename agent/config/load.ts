import { readFileSync } from "node:fs";
import { isAbsolute, resolve, dirname } from "node:path";
import { parse as parseToml, TomlError } from "smol-toml";
import type { z } from "zod";
import { configSchema, type Config } from "./schema.js";
import { ConfigError } from "../util/errors.js";
import { defaultConfigFile, defaultStateDir } from "../util/paths.js";

export interface LoadedConfig {
  config: Config;
  /** The file read, or undefined when none existed and defaults are in force. */
  file: string | undefined;
}

/**
 * Reads and validates the configuration. With an explicit `file` it must exist; without one the
 * default path is used if it exists. Every problem is reported at once, each naming the file, the key
 * path, what was expected and what was found.
 */
export function loadConfig(file?: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  const explicit = file !== undefined;
  const path = resolve(file ?? defaultConfigFile(env));
  let text: string | undefined;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (!explicit && code === "ENOENT") text = undefined;
    else throw new ConfigError([`${path}: cannot read: ${code ?? String(err)}`]);
  }
  if (text === undefined) return { config: finish(parseConfig({}, "(defaults)"), undefined, env), file: undefined };

  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (err) {
    if (err instanceof TomlError) {
      const first = err.message.split("\n")[0] ?? err.message;
      throw new ConfigError([`${path}:${err.line}:${err.column}: not valid TOML: ${first}`]);
    }
    throw new ConfigError([`${path}: not valid TOML: ${String(err)}`]);
  }
  const config = finish(parseConfig(raw, path), path, env);
  checkConfig(config, path);
  return { config, file: path };
}

/** Validates an already-parsed object (also used by tests and by `config check`). */
export function parseConfig(raw: unknown, source: string): Config {
  const result = configSchema.safeParse(raw);
  if (result.success) return result.data;
  throw new ConfigError(result.error.issues.flatMap((issue) => describeIssue(issue, raw, source)));
}

function describeIssue(issue: z.core.$ZodIssue, raw: unknown, source: string): string[] {
  const key = issue.path.map(String).join(".");
  const found = valueAt(raw, issue.path);
  switch (issue.code) {
    case "unrecognized_keys":
      return issue.keys.map((k) => {
        const full = key === "" ? k : `${key}.${k}`;
        return `${source}: ${full}: unknown key (expected one of: ${knownKeys(issue.path).join(", ")})`;
      });
    case "invalid_type":
      return [`${source}: ${key}: expected ${issue.expected}, found ${describeValue(found)}`];
    case "invalid_value":
      return [`${source}: ${key}: expected one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}, found ${describeValue(found)}`];
    case "too_small":
    case "too_big": {
      const bound = issue.code === "too_small" ? issue.minimum : issue.maximum;
      const cmp = issue.code === "too_small" ? (issue.inclusive ? ">=" : ">") : issue.inclusive ? "<=" : "<";
      const what = issue.origin === "array" ? "a list with length" : issue.origin === "string" ? "a string of length" : "a value";
      return [`${source}: ${key}: expected ${what} ${cmp} ${String(bound)}, found ${describeValue(found)}`];
    }
    default:
      return [`${source}: ${key === "" ? "(top level)" : key}: ${issue.message}, found ${describeValue(found)}`];
  }
}

function valueAt(raw: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = raw;
  for (const p of path) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<PropertyKey, unknown>)[p];
  }
  return v;
}

function describeValue(v: unknown): string {
  if (v === undefined) return "nothing";
  if (v instanceof Date) return `a date (${v.toISOString()})`;
  if (Array.isArray(v)) return `a list (${truncate(JSON.stringify(v))})`;
  if (v !== null && typeof v === "object") return "a table";
  if (typeof v === "string") return `the string ${truncate(JSON.stringify(v))}`;
  return `${typeof v} ${String(v)}`;
}

function truncate(s: string): string {
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function knownKeys(path: readonly PropertyKey[]): string[] {
  // Walk the schema's shape along the path to list the valid keys at that level.
  let shape: Record<string, unknown> | undefined = configSchema.shape;
  for (const p of path) {
    const next: unknown = shape?.[String(p)];
    shape = unwrapShape(next);
  }
  return shape ? Object.keys(shape) : [];
}

function unwrapShape(s: unknown): Record<string, unknown> | undefined {
  let cur: unknown = s;
  for (let i = 0; i < 5 && cur !== undefined; i++) {
    const def = (cur as { def?: { shape?: Record<string, unknown>; innerType?: unknown } }).def;
    if (def?.shape) return def.shape;
    cur = def?.innerType;
  }
  return undefined;
}

/** Resolves paths relative to the config file and fills in state-dir defaults. */
function finish(config: Config, file: string | undefined, env: NodeJS.ProcessEnv): Config {
  const base = file ? dirname(file) : process.cwd();
  const abs = (p: string): string => (p === "" || isAbsolute(p) ? p : resolve(base, p));
  const stateDir = config.state_dir === "" ? defaultStateDir(env) : abs(config.state_dir);
  return {
    ...config,
    state_dir: stateDir,
    server: { ...config.server, tls_cert: abs(config.server.tls_cert), tls_key: abs(config.server.tls_key), web_root: abs(config.server.web_root) },
    auth: {
      ...config.auth,
      secret_file: config.auth.secret_file === "" ? resolve(stateDir, "secret.key") : abs(config.auth.secret_file),
      revocation_file: config.auth.revocation_file === "" ? resolve(stateDir, "revoked-jti") : abs(config.auth.revocation_file),
      public_keys: config.auth.public_keys.map(abs),
    },
  };
}

/** Cross-field checks that a schema cannot express. */
export function checkConfig(config: Config, source: string): void {
  const problems: string[] = [];
  if ((config.server.tls_cert === "") !== (config.server.tls_key === ""))
    problems.push(`${source}: server.tls_cert / server.tls_key: expected both or neither, found only ${config.server.tls_cert ? "tls_cert" : "tls_key"}`);
  if (config.auth.default_ttl_s > config.auth.max_ttl_s)
    problems.push(`${source}: auth.default_ttl_s: expected a value <= auth.max_ttl_s (${config.auth.max_ttl_s}), found ${config.auth.default_ttl_s}`);
  if (config.metrics.enabled && config.metrics.port !== 0 && config.metrics.port === config.server.port && config.metrics.host === config.server.host)
    problems.push(`${source}: metrics.port: expected a port other than server.port, found ${config.metrics.port}`);
  if (problems.length > 0) throw new ConfigError(problems);
}
