import { accessSync, constants, existsSync } from "node:fs";
import { delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { UnsupportedError } from "../util/errors.js";

/** The helpers built by `make -C native/preload` (see native/preload/Makefile). */
export interface NativeHelpers {
  /** wl-pdeathsig-exec: runs a program that gets SIGTERM when its parent (the agent) dies. */
  execWrapper: string;
  /** LD_PRELOAD for sway as root: setuid/setgid fail with EPERM. */
  noSetuid: string;
  /** LD_PRELOAD for xdg-desktop-portal-wlr 0.7 without a GPU: synthetic linux_dmabuf events. */
  xdpwShm: string;
}

let cached: NativeHelpers | undefined;

/**
 * Finds native/preload/build by walking up from this module: it works from the sources
 * (agent/desktop/) and from the compiled output (dist/agent/desktop/) alike.
 */
export function nativeHelpers(): NativeHelpers {
  if (cached) return cached;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const build = join(dir, "native", "preload", "build");
    if (existsSync(join(dir, "native", "preload", "Makefile"))) {
      const h: NativeHelpers = {
        execWrapper: join(build, "wl-pdeathsig-exec"),
        noSetuid: join(build, "libwl-no-setuid.so"),
        xdpwShm: join(build, "libwl-xdpw-shm.so"),
      };
      for (const f of Object.values(h)) {
        if (!existsSync(f)) {
          throw new UnsupportedError(`${f} is missing: build the native helpers with \`npm run build:native\` (or \`make -C native/preload\`)`);
        }
      }
      cached = h;
      return h;
    }
    const up = dirname(dir);
    if (up === dir) throw new UnsupportedError("native/preload not found next to the agent: is the package complete?");
    dir = up;
  }
}

/** The first executable `name` on PATH, or undefined. */
export function which(name: string, path = process.env.PATH ?? "/usr/bin:/bin"): string | undefined {
  if (name.includes("/")) return isExecutable(name) ? name : undefined;
  for (const d of path.split(delimiter)) {
    if (d === "") continue;
    const f = join(d, name);
    if (isExecutable(f)) return f;
  }
  return undefined;
}

export function isExecutable(f: string): boolean {
  try {
    accessSync(f, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The programs the headless desktop runs, with the Debian package that provides each. */
export interface DesktopPrograms {
  dbusDaemon: string;
  pipewire: string;
  wireplumber: string;
  pwCli: string;
  sway: string;
  swaymsg: string;
  xdpw: string;
  portal: string;
}

// Portal daemons live outside PATH; Debian and Fedora use /usr/libexec, Arch /usr/lib.
const LIBEXEC_DIRS = ["/usr/libexec", "/usr/lib", "/usr/local/libexec", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"];

export function desktopPrograms(): DesktopPrograms {
  const missing: string[] = [];
  const onPath = (name: string, pkg: string): string => {
    const f = which(name);
    if (!f) missing.push(`${name} (Debian package ${pkg})`);
    return f ?? name;
  };
  const libexec = (name: string, pkg: string): string => {
    for (const d of LIBEXEC_DIRS) {
      const f = join(d, name);
      if (isExecutable(f)) return f;
    }
    missing.push(`${name} (Debian package ${pkg})`);
    return name;
  };
  const p: DesktopPrograms = {
    dbusDaemon: onPath("dbus-daemon", "dbus-daemon"),
    pipewire: onPath("pipewire", "pipewire"),
    wireplumber: onPath("wireplumber", "wireplumber"),
    pwCli: onPath("pw-cli", "pipewire-bin"),
    sway: onPath("sway", "sway"),
    swaymsg: onPath("swaymsg", "sway"),
    xdpw: libexec("xdg-desktop-portal-wlr", "xdg-desktop-portal-wlr"),
    portal: libexec("xdg-desktop-portal", "xdg-desktop-portal"),
  };
  if (missing.length > 0) {
    throw new UnsupportedError(`the headless desktop needs: ${missing.join(", ")}. Install them (scripts/setup.sh does).`);
  }
  return p;
}
