import { homedir } from "node:os";
import { join } from "node:path";

/** XDG base directories (https://specifications.freedesktop.org/basedir-spec/) for this user. */
export function xdgConfigHome(env = process.env): string {
  return nonEmpty(env.XDG_CONFIG_HOME) ?? join(homedir(), ".config");
}
export function xdgStateHome(env = process.env): string {
  return nonEmpty(env.XDG_STATE_HOME) ?? join(homedir(), ".local", "state");
}
export function xdgDataHome(env = process.env): string {
  return nonEmpty(env.XDG_DATA_HOME) ?? join(homedir(), ".local", "share");
}
export function xdgRuntimeDir(env = process.env): string | undefined {
  return nonEmpty(env.XDG_RUNTIME_DIR);
}

/** `$XDG_CONFIG_HOME/wl-webrtc/config.toml` */
export function defaultConfigFile(env = process.env): string {
  return join(xdgConfigHome(env), "wl-webrtc", "config.toml");
}
/** `$XDG_STATE_HOME/wl-webrtc`: the HS256 secret, the restore token, the revocation list. */
export function defaultStateDir(env = process.env): string {
  return join(xdgStateHome(env), "wl-webrtc");
}

function nonEmpty(s: string | undefined): string | undefined {
  return s !== undefined && s !== "" ? s : undefined;
}
