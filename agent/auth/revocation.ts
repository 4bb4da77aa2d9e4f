import { appendFileSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { dirname } from "node:path";

/**
 * Revoked token ids (`jti`), one per line in a file. The file is re-read when its mtime or size
 * changes, so `wl-webrtc revoke` takes effect on a running agent at the next authentication.
 */
export class RevocationList {
  readonly file: string;
  #ids = new Set<string>();
  #stamp = "";

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
