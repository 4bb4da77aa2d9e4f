import { closeSync, constants, createReadStream, fstatSync, openSync, readlinkSync, realpathSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { extname, join, normalize, sep } from "node:path";
import { pipeline } from "node:stream";

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".map": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".txt": "text/plain; charset=utf-8",
};

const HEADERS = {
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
  "content-security-policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self' 'unsafe-inline'",
};

/**
 * Serves files below one directory, GET/HEAD only; nothing outside it is reachable, through `..` or
 * through a symlink: a file is served only when its real path (every link resolved) lies under the real
 * path of the root, checked on the opened file itself so that a link swapped in meanwhile changes nothing.
 * Links that stay inside the root are followed.
 */
export class StaticFiles {
  constructor(readonly root: string) {}

  serve(req: IncomingMessage, res: ServerResponse): void {
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    let path: string;
    try {
      path = decodeURIComponent((req.url ?? "/").split("?")[0]!.split("#")[0]!);
    } catch {
      res.writeHead(400).end();
      return;
    }
    if (path.endsWith("/")) path += "index.html";
    const file = normalize(join(this.root, path));
    if (!file.startsWith(normalize(this.root + sep)) || path.includes("\0")) {
      res.writeHead(404).end();
      return;
    }
    const opened = openInside(this.root, file);
    if (!opened) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    const { fd, size } = opened;
    res.writeHead(200, { ...HEADERS, "content-type": TYPES[extname(file)] ?? "application/octet-stream", "content-length": size, "cache-control": "no-cache" });
    if (req.method === "HEAD") {
      closeSync(fd);
      res.end();
      return;
    }
    // pipeline destroys both ends when either fails or the client goes away, so the fd is always closed.
    pipeline(createReadStream("", { fd }), res, () => undefined);
  }
}

/** Opens `file` read-only when it is a regular file whose real path lies under `root`'s; else undefined. */
function openInside(root: string, file: string): { fd: number; size: number } | undefined {
  let fd: number;
  let realRoot: string;
  try {
    realRoot = realpathSync(root);
    fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    // The path the kernel actually opened (Linux): no race between a check and the open.
    const real = readlinkSync(`/proc/self/fd/${fd}`);
    const st = fstatSync(fd);
    if (st.isFile() && real.startsWith(realRoot.endsWith(sep) ? realRoot : realRoot + sep)) return { fd, size: st.size };
  } catch {
    // fall through: refuse
  }
  closeSync(fd);
  return undefined;
}
