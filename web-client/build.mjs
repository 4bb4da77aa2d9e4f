// Builds the web client: bundles src/main.ts with esbuild into dist/, copies the static files.
import { build } from "esbuild";
import { cpSync, mkdirSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL(".", import.meta.url));
rmSync(`${root}dist`, { recursive: true, force: true });
mkdirSync(`${root}dist`, { recursive: true });
await build({
  entryPoints: [`${root}src/main.ts`],
  bundle: true,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  outfile: `${root}dist/app.js`,
  sourcemap: true,
  minify: true,
  logLevel: "warning",
});
cpSync(`${root}static`, `${root}dist`, { recursive: true });
