// The status line under the conversation: what is happening now (sending, answering,
// reconnecting, offline, a message that could not be sent), with Stop or Send beside the
// composer to match.

const STATUS_TEXT = {
  idle: "",
  loading: "Loading…",
  sending: "Sending…",
  streaming: "Answering…",
  reconnecting: "Connection lost. Reconnecting…",
  live: "Reconnected: live again.",
  stopping: "Stopping…",
  stopped: "Stopped.",
  interrupted: "Interrupted: the server lost this answer. The part it produced is kept.",
  error: "Error",
  offline: "You are offline. The page reconnects when the network is back.",
};

const RUNNING = new Set(["sending", "streaming", "reconnecting", "live", "stopping"]);

/**
 * `setStatus(kind, detail, options)` for the page's elements (`ui`). `noted`: the outcome is
 * already said under the message it belongs to (stopped, interrupted, an answer's error),
 * so the status line keeps quiet about it: one event, one message. `retry`: offer "Try
 * again" (a message that could not be sent).
 */
export function makeStatus(ui) {
  let liveTimer = null;
  let loadingTimer = null;

  return function setStatus(kind, detail, { noted = false, retry = false } = {}) {
    clearTimeout(liveTimer);
    clearTimeout(loadingTimer);
    let text = STATUS_TEXT[kind] ?? "";
    if (kind === "error") text = `Error: ${detail || "something went wrong"}`;
    if (noted) text = "";
    if (kind === "loading") {
      // Most loads are done before anyone could read "Loading…": say it only when one is not.
      text = "";
      loadingTimer = setTimeout(() => {
        if (ui.status.dataset.state === "loading") ui.status.textContent = STATUS_TEXT.loading;
      }, 500);
    }
    ui.status.dataset.state = kind;
    ui.status.dataset.noted = noted ? "true" : "false";
    ui.status.textContent = text;
    ui.retry.hidden = !retry;
    const running = RUNNING.has(kind);
    ui.app.dataset.answer = running ? "running" : "idle";
    ui.stop.hidden = !running;
    ui.send.hidden = running;
    if (kind === "live") {
      // "Live again" is news for a moment, then the answer simply streams.
      liveTimer = setTimeout(() => {
        if (ui.status.dataset.state === "live") setStatus("streaming");
      }, 2500);
    }
  };
}
