export { HeadlessDesktop, DesktopStartError, type HeadlessDesktopOptions, type HeadlessDesktopEvents, type SpawnClientOptions, type RestartPolicy, type DesktopState, type DesktopStatus } from "./headless.js";
export { detectSession, type SessionStatus } from "./detect.js";
export { openSharedDesktop, type SharedDesktop } from "./select.js";
