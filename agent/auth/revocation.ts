import { appendFileSync, mkdirSync, readFileSync, statSync, unwatchFile, watchFile } from "node:fs";
import { dirname } from "node:path";

/** How often a watched revocation file is looked at (one stat). A revocation takes effect within this. */
export const REVOCATION_POLL_MS = 250;

/**
 * Revoked token ids (`jti`), one per line in a file. The file is re-read when its mtime or size
 * changes, so `wl-webrtc revoke` (another process) takes effect on a running agent: at the next
 * authentication, and for live sessions through `watch()`.
 */
export class RevocationList {
  readonly file: string;
  #ids = new Set<string>();
  #stamp = "";
  readonly #watchers = new Set<() => void>();

  constructor(file: string) {
    this.file = file;
  }

  has(jti: string): boolean {
    this.#refresh();
    return this.#ids.has(jti);
  }

  add(jti: string): void {
    if (!/^[A-Za-z0-9_-]{1,128}$/.test(jti)) throw new TypeError(`not a token id: ${JSON.stringify(jti)}`);
    mkdirSync(dirname(this.file), { recursive: true, mode: 0o700 });
    appendFileSync(this.file, `${jti}\n`, { mode: 0o600 });
    this.#refresh();
    this.#notify();
  }

  /**
   * Calls `onChange` whenever the file may have changed (polled every REVOCATION_POLL_MS with a stat, which
   * also sees a file that is created, replaced or on a network file system; inotify would not see all of
   * those), and at once after an `add()` in this process. The poll does not keep the process alive.
   */
  watch(onChange: () => void): { close(): void } {
    if (this.#watchers.size === 0) watchFile(this.file, { interval: REVOCATION_POLL_MS, persistent: false }, this.#onStat);
    this.#watchers.add(onChange);
    let closed = false;
    return {
      close: () => {
        if (closed) return;
        closed = true;
        this.#watchers.delete(onChange);
        if (this.#watchers.size === 0) unwatchFile(this.file, this.#onStat);
      },
    };
  }

  /** Whether some watch() is still open (the file is polled). */
  get watching(): boolean {
    return this.#watchers.size > 0;
  }

  readonly #onStat = (): void => this.#notify();

  #notify(): void {
    for (const w of [...this.#watchers]) {
      try {
        w();
      } catch {
        // a watcher's failure is its own; the others still run
      }
    }
  }

  #refresh(): void {
    let stamp: string;
    try {
      const st = statSync(this.file);
      stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch {
      this.#ids.clear();
      this.#stamp = "";
      return;
    }
    if (stamp === this.#stamp) return;
    const ids = new Set<string>();
    for (const line of readFileSync(this.file, "utf8").split("\n")) {
      const id = line.trim();
      if (id !== "" && !id.startsWith("#")) ids.add(id);
    }
    this.#ids = ids;
    this.#stamp = stamp;
  }
}
