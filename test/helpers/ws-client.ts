import { WebSocket, type ClientOptions } from "ws";

export interface Closed {
  code: number;
  reason: string;
}

/** A real WebSocket client that records what it receives, for assertions. */
export class TestClient {
  readonly ws: WebSocket;
  readonly messages: Record<string, unknown>[] = [];
  readonly closed: Promise<Closed>;
  readonly opened: Promise<void>;
  #waiters: { pred: (m: Record<string, unknown>) => boolean; resolve: (m: Record<string, unknown>) => void }[] = [];

  constructor(url: string, protocols?: string | string[], options?: ClientOptions) {
    this.ws = new WebSocket(url, protocols, options);
    this.opened = new Promise((resolve, reject) => {
      this.ws.once("open", () => resolve());
      this.ws.once("unexpected-response", (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
      this.ws.once("error", reject);
    });
    this.opened.catch(() => undefined);
    this.closed = new Promise((resolve) => this.ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() })));
    this.ws.on("error", () => undefined);
    this.ws.on("message", (data) => {
      let m: Record<string, unknown>;
      try {
        m = JSON.parse(String(data)) as Record<string, unknown>;
      } catch {
        m = { type: "(not json)", raw: String(data) };
      }
      this.messages.push(m);
      this.#waiters = this.#waiters.filter((w) => {
        if (!w.pred(m)) return true;
        w.resolve(m);
        return false;
      });
    });
  }

  send(msg: unknown): void {
    this.ws.send(typeof msg === "string" ? msg : JSON.stringify(msg));
  }

  /** The next message (already received or future) matching `type`. */
  next(type: string, timeoutMs = 5000): Promise<Record<string, unknown>> {
    const found = this.messages.find((m) => m.type === type);
    if (found) {
      this.messages.splice(this.messages.indexOf(found), 1);
      return Promise.resolve(found);
    }
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no ${type} message within ${timeoutMs} ms; got ${JSON.stringify(this.messages)}`)), timeoutMs);
      this.#waiters.push({
        pred: (m) => m.type === type,
        resolve: (m) => {
          clearTimeout(t);
          this.messages.splice(this.messages.indexOf(m), 1);
          resolve(m);
        },
      });
    });
  }

  close(): void {
    this.ws.close();
  }
}

/** Connects and says hello; resolves with the welcome or the close. */
export async function hello(url: string, token: string | undefined, extra: Record<string, unknown> = {}): Promise<{ client: TestClient; welcome?: Record<string, unknown>; closed?: Closed }> {
  const client = new TestClient(url);
  await client.opened;
  client.send({ type: "hello", v: 1, ...(token !== undefined ? { token } : {}), ...extra });
  const welcome = client.next("welcome", 10_000).then(
    (w) => ({ welcome: w }),
    () => new Promise<never>(() => undefined), // the close below settles the race instead
  );
  const r = await Promise.race([welcome, client.closed.then((c) => ({ closed: c }))]);
  return { client, ...r };
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e as Error);
      },
    );
  });
}
