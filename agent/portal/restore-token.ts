/**
 * The portal's restore token, kept in `<stateDir>/restore-token` (normally
 * `$XDG_STATE_HOME/wl-webrtc/restore-token`). It is a grant to capture the screen without asking, so
 * the file is 0600 in a 0700 directory, and it is replaced atomically (write a temporary file, fsync,
 * rename) so a crash never leaves half a token. Tokens are single-use: the newest one always wins.
 *
 * A ScreenCast token and a RemoteDesktop token live in different portal tables and are not
 * interchangeable, so the file records which kind it is.
 */
import { randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { join } from "node:path";

export type RestoreTokenKind = "screencast" | "remote-desktop";

export interface RestoreToken {
  kind: RestoreTokenKind;
  token: string;
}

export const RESTORE_TOKEN_FILE = "restore-token";

export class RestoreTokenStore {
  readonly stateDir: string;
  readonly file: string;

  constructor(stateDir: string) {
    this.stateDir = stateDir;
    this.file = join(stateDir, RESTORE_TOKEN_FILE);
  }

  /** The saved token, or undefined when there is none (or the file is not ours to understand). */
  async load(): Promise<RestoreToken | undefined> {
    let text: string;
    try {
      text = await readFile(this.file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    try {
      const v = JSON.parse(text) as { kind?: unknown; token?: unknown };
      if ((v.kind === "screencast" || v.kind === "remote-desktop") && validToken(v.token)) return { kind: v.kind, token: v.token };
    } catch {
      // A bare token (written by hand, or by an older build): treat it as a ScreenCast token.
      const t = text.trim();
      if (validToken(t)) return { kind: "screencast", token: t };
    }
    return undefined;
  }

  async save(t: RestoreToken): Promise<void> {
    if (!validToken(t.token)) throw new TypeError("restore token must be a non-empty single-line string");
    await mkdir(this.stateDir, { recursive: true, mode: 0o700 });
    const tmp = join(this.stateDir, `.${RESTORE_TOKEN_FILE}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
    // O_EXCL with mode 0600: the token is never readable by others, not even for a moment.
    const fh = await open(tmp, "wx", 0o600);
    try {
      await fh.writeFile(`${JSON.stringify({ kind: t.kind, token: t.token })}\n`);
      await fh.sync();
    } catch (err) {
      await fh.close();
      await rm(tmp, { force: true });
      throw err;
    }
    await fh.close();
    try {
      await rename(tmp, this.file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    // Make the rename itself durable.
    const dir = await open(this.stateDir, "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  /** Forgets the token (after the portal rejected it, so the next start asks afresh instead of looping). */
  async clear(): Promise<void> {
    await rm(this.file, { force: true });
  }
}

function validToken(t: unknown): t is string {
  return typeof t === "string" && t.length > 0 && t.length <= 4096 && !/[\r\n\0]/.test(t);
}
