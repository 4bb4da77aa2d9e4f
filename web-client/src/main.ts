export {};

// The web client. For now: sign in with a token (from the URL fragment or pasted; never a query
// string), open the signaling WebSocket, say hello, and show the outcome. Streaming comes with the
// WebRTC stage.

const PROTOCOL_VERSION = 1;
const SUBPROTOCOL = "wl-webrtc.v1";

const CLOSE_MESSAGES: Record<number, string> = {
  1001: "The agent is shutting down.",
  1009: "A message was too large for the agent.",
  4400: "The agent did not understand this client (bad message).",
  4401: "The token was refused",
  4406: "This client speaks a protocol version the agent does not support.",
  4408: "The agent did not receive a hello in time.",
  4410: "The connection went idle.",
  4413: "This client was not reading fast enough.",
  4429: "Too many messages: rate limited.",
  4500: "The agent hit an internal error.",
  4503: "The agent has too many sessions; try again later.",
};

const statusEl = document.getElementById("status") as HTMLParagraphElement;
const form = document.getElementById("signin") as HTMLFormElement;
const input = document.getElementById("token") as HTMLInputElement;

function setStatus(text: string, kind: "info" | "ok" | "error" = "info"): void {
  statusEl.textContent = text;
  statusEl.dataset.kind = kind;
}

function tokenFromFragment(): string | undefined {
  const params = new URLSearchParams(location.hash.slice(1));
  const t = params.get("token") ?? undefined;
  if (t !== undefined) {
    sessionStorage.setItem("wl-webrtc-token", t);
    // Drop the token from the address bar and history.
    history.replaceState(null, "", location.pathname);
  }
  return t ?? sessionStorage.getItem("wl-webrtc-token") ?? undefined;
}

function connect(token: string): void {
  setStatus("Connecting…");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/signal`, SUBPROTOCOL);
  ws.onopen = () => ws.send(JSON.stringify({ type: "hello", v: PROTOCOL_VERSION, token, client: { name: "wl-webrtc-web" } }));
  ws.onmessage = (ev) => {
    let msg: { type?: string; role?: string; session?: string; message?: string };
    try {
      msg = JSON.parse(String(ev.data)) as typeof msg;
    } catch {
      return;
    }
    if (msg.type === "welcome") setStatus(`Connected as ${msg.role ?? "?"} (session ${msg.session ?? "?"}). Streaming is not available in this build yet.`, "ok");
    else if (msg.type === "error") setStatus(`Agent error: ${msg.message ?? "unknown"}`, "error");
  };
  ws.onclose = (ev) => {
    if (ev.code === 1000) return;
    let text = CLOSE_MESSAGES[ev.code] ?? `Disconnected (${ev.code}).`;
    if (ev.code === 4401) {
      text = `${text}: ${ev.reason.replace(/^unauthorized: /, "")}. Get a new token with \`wl-webrtc token\`.`;
      sessionStorage.removeItem("wl-webrtc-token");
      form.hidden = false;
    }
    if (ev.code === 1006) text = "The agent is unreachable.";
    setStatus(text, "error");
  };
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const t = input.value.trim();
  if (t === "") return;
  sessionStorage.setItem("wl-webrtc-token", t);
  input.value = "";
  form.hidden = true;
  connect(t);
});

const initial = tokenFromFragment();
if (initial) connect(initial);
else {
  form.hidden = false;
  setStatus("Paste a token to connect.");
}
