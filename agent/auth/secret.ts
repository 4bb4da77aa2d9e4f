import { randomBytes } from "node:crypto";
import { mkdirSync, openSync, readFileSync, statSync, writeSync, closeSync, renameSync } from "node:fs";
import { dirname } from "node:path";
import type { Logger } from "../log/logger.js";
import { WlError } from "../util/errors.js";

/** Smallest secret accepted for HS256: 32 bytes, as RFC 7518 section 3.2 asks. */
const MIN_SECRET_BYTES = 32;

/**
 * The HS256 signing secret. From `WL_WEBRTC_SECRET` when set, else from the secret file, which is
 * created on first run (random, mode 0600, directory 0700). Never from the command line.
 */
export function loadOrCreateSecret(file: string, env: NodeJS.ProcessEnv, log?: Logger): Uint8Array {
  const fromEnv = env.WL_WEBRTC_SECRET;
  if (fromEnv !== undefined && fromEnv !== "") {
    const bytes = Buffer.from(fromEnv, "utf8");
    if (bytes.length < MIN_SECRET_BYTES)
      throw new WlError("secret", `WL_WEBRTC_SECRET: expected at least ${MIN_SECRET_BYTES} bytes, found ${bytes.length}`);
    return new Uint8Array(bytes);
  }
  let text: string | undefined;
  try {
    text = readFileSync(file, "utf8").trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT")
      throw new WlError("secret", `${file}: cannot read the token secret: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  if (text === undefined) {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    const secret = randomBytes(48).toString("base64url");
    const tmp = `${file}.${process.pid}.tmp`;
    // O_EXCL on a private name, then rename: a concurrent first run cannot leave a half-written file.
    const fd = openSync(tmp, "wx", 0o600);
    try {
      writeSync(fd, `${secret}\n`);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
    log?.info({ file }, "created a new token secret");
    return new Uint8Array(Buffer.from(secret, "utf8"));
  }
  const mode = statSync(file).mode & 0o777;
  if ((mode & 0o077) !== 0) log?.warn({ file, mode: mode.toString(8) }, "the token secret file is readable by others: chmod 600 it");
  const bytes = Buffer.from(text, "utf8");
  if (bytes.length < MIN_SECRET_BYTES)
    throw new WlError("secret", `${file}: expected a secret of at least ${MIN_SECRET_BYTES} bytes, found ${bytes.length}`);
  return new Uint8Array(bytes);
}
