// Following one answer: assembling UI message chunks, and surviving lost connections.
//
// An answer is read from the chat service's AI SDK v5 UI message stream (spec:
// /work/shared/specs/ai-sdk.md section 2). Every frame carries `id: <seq>`, the sequence
// number of the last chunk in it; the follower remembers the last one it applied. When the
// connection breaks (network loss, a server restart, a proxy timeout), it asks for
// `GET /api/chat/{id}/stream?after=<last seq>`: only what it missed, never a full replay,
// so the text on screen just continues.

import * as api from "./api.js";
import { readEvents } from "./sse.js";

/** The assistant UIMessage being built from chunks (what `useChat` would hold). */
export class AssistantMessage {
  constructor(id = null) {
    this.id = id;
    this.role = "assistant";
    this.parts = [];
    this.status = "streaming"; // then done | stopped | error | interrupted
    this.error = null;
    this.interrupted = false; // set by the service's data-unbroken-state marker
    this.open = {}; // chunk part id -> index in parts
  }

  static restore(saved) {
    const message = new AssistantMessage(saved.id);
    message.parts = saved.parts;
    message.open = saved.open;
    return message;
  }

  save() {
    return { id: this.id, parts: this.parts, open: this.open };
  }

  reset() {
    this.parts = [];
    this.open = {};
    this.status = "streaming";
    this.error = null;
    this.interrupted = false;
  }

  /** The UIMessage to send back to the server as history. */
  toUIMessage() {
    return { id: this.id, role: "assistant", parts: this.parts.map(({ state, ...part }) => part) };
  }

  text() {
    return this.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
  }

  _part(kind, pid) {
    let index = this.open[`${kind}:${pid}`];
    if (index === undefined) {
      // A delta whose start we never saw (should not happen with gapless resumes): keep it.
      index = this.parts.push({ type: kind, text: "", state: "streaming" }) - 1;
      this.open[`${kind}:${pid}`] = index;
    }
    return this.parts[index];
  }

  /** Apply one chunk; returns the terminal type (finish, abort, error) or null. */
  apply(chunk) {
    const type = chunk?.type;
    switch (type) {
      case "start":
        if (chunk.messageId) this.id = chunk.messageId;
        return null;
      case "text-start":
      case "reasoning-start": {
        const kind = type.slice(0, -6);
        this.open[`${kind}:${chunk.id}`] = this.parts.push({ type: kind, text: "", state: "streaming" }) - 1;
        return null;
      }
      case "text-delta":
      case "reasoning-delta":
        this._part(type.slice(0, -6), chunk.id).text += chunk.delta ?? "";
        return null;
      case "text-end":
      case "reasoning-end":
        this._part(type.slice(0, -4), chunk.id).state = "done";
        return null;
      case "tool-input-start":
        this.parts.push({ type: "dynamic-tool", toolCallId: chunk.toolCallId, toolName: chunk.toolName, state: "input-streaming", input: "" });
        return null;
      case "tool-input-available":
      case "tool-output-available":
      case "tool-output-error": {
        let part = this.parts.find((p) => p.toolCallId === chunk.toolCallId);
        if (!part) {
          part = { type: "dynamic-tool", toolCallId: chunk.toolCallId, toolName: chunk.toolName };
          this.parts.push(part);
        }
        if ("input" in chunk) part.input = chunk.input;
        if ("output" in chunk) part.output = chunk.output;
        if (chunk.errorText) part.errorText = chunk.errorText;
        part.state = type === "tool-input-available" ? "input-available" : type === "tool-output-error" ? "output-error" : "output-available";
        return null;
      }
      case "finish":
        this.status = "done";
        return type;
      case "abort":
        this.status = "stopped";
        return type;
      case "data-unbroken-state":
        // Sent (transient) just before the `error` of a stream whose producer was lost.
        if (chunk.data?.state === "interrupted") this.interrupted = true;
        return null;
      case "error":
        this.error = chunk.errorText || "the answer could not be completed";
        this.status = this.interrupted ? "interrupted" : "error";
        return type;
      default:
        return null; // start-step, finish-step, data-*, sources, metadata: nothing to show
    }
  }
}

/** Wait `ms` (or, while the browser is offline, until it is back online), or until abort. */
const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(done, navigator.onLine ? ms : 30000);
    function done() {
      clearTimeout(timer);
      window.removeEventListener("online", done);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    // Coming back online is the best moment to retry: do not wait for the timer.
    window.addEventListener("online", done, { once: true });
    signal?.addEventListener("abort", done, { once: true });
  });

/** Retry delay: 0.3 s doubling to 2.5 s, with jitter so a restarted server is not hit by
 * every page at the same instant. */
const backoff = (attempt) => Math.min(300 * 2 ** attempt, 2500) * (0.75 + Math.random() / 2);

const isNetworkError = (err) => err instanceof TypeError || err?.name === "TypeError" || err?.name === "AbortError";

//: No byte for this long (the service sends keep-alives while an answer is idle): the
//: connection is dead even if the browser has not noticed. Resume from the offset.
const STALL_MS = 35000;

/**
 * Reads one answer until it ends, reconnecting from the last sequence number it has.
 *
 * Callbacks: `onChange(message)` after chunks were applied, `onState(state, info)` for
 * sending | streaming | reconnecting | live | ended, and `onEnded(message, reason)` once.
 * `reason` is "terminal" (the stream said how it ended), "gone" (the server has nothing to
 * resume: the answer ended while we were away, read it from the store) or "detached".
 */
export class AnswerFollower {
  constructor({ chatId, message = new AssistantMessage(), lastSeq = null, onChange, onState, onEnded }) {
    this.chatId = chatId;
    this.message = message;
    this.lastSeq = lastSeq;
    this.onChange = onChange ?? (() => {});
    this.onState = onState ?? (() => {});
    this.onEnded = onEnded ?? (() => {});
    this.controller = new AbortController();
    this.state = null;
    this.attempts = 0;
    this.resumes = []; // the `after` of every resume request, for the curious (and tests)
  }

  get messageId() {
    return this.message.id;
  }

  get detached() {
    return this.controller.signal.aborted;
  }

  /** Stop reading (navigation away). The answer itself goes on on the server. */
  detach() {
    this.controller.abort();
  }

  _setState(state, info) {
    if (this.state === state && state !== "reconnecting") return;
    this.state = state;
    this.onState(state, info);
  }

  /** Send `messages` (the last one is the user's) and follow the answer; `options`:
   * `trigger` and `messageId`, as `api.postMessage` takes them. */
  send(messages, options = {}) {
    this._setState("sending");
    return this._run(() => api.postMessage(this.chatId, messages, this.controller.signal, options), { posting: true });
  }

  /** Follow the chat's active answer: after `lastSeq` if we have it, else a full replay. */
  resume() {
    return this._run(() => this._reopen());
  }

  async _reopen() {
    if (this.lastSeq !== null && this.message.id) {
      // An offset only means something in the same stream: make sure the chat's active
      // answer is still ours (another tab may have started a new one meanwhile).
      const detail = await api.getChat(this.chatId, this.controller.signal);
      if (detail.active?.messageId !== this.message.id) return null; // ended: read the store
    }
    const response = await api.resumeStream(this.chatId, this.lastSeq, this.controller.signal);
    this.resumes.push(this.lastSeq);
    if (response && this.lastSeq === null) this.message.reset(); // a full replay rebuilds it
    return response;
  }

  async _run(open, { posting = false } = {}) {
    let ended = null;
    let reconnecting = false;
    while (!this.detached) {
      let response;
      try {
        response = await open();
      } catch (err) {
        if (this.detached) break;
        if (isNetworkError(err) || (err instanceof api.ApiError && err.status >= 500)) {
          // The request may or may not have reached the server; either way, ask what the
          // chat is doing now (a resume answers 204 when nothing runs).
          reconnecting = true;
          this._setState("reconnecting", { reason: err.message });
          await sleep(backoff(this.attempts++), this.controller.signal);
          open = () => this._reopen();
          posting = false;
          continue;
        }
        this._setState("ended");
        this.onEnded(this.message, "failed", err);
        return;
      }
      if (response === null) {
        ended = "gone";
        break;
      }
      this.attempts = 0;
      if (reconnecting) {
        reconnecting = false;
        this._setState("live");
      } else if (!posting || this.state === "sending") {
        this._setState("streaming");
      }
      let terminal = null;
      let done = false;
      // One connection's lifetime: ended by a detach, by the browser going offline (its
      // open connections may hang for minutes before failing), or by a stall.
      const connection = new AbortController();
      const cut = () => connection.abort();
      const onDetach = () => connection.abort();
      this.controller.signal.addEventListener("abort", onDetach, { once: true });
      window.addEventListener("offline", cut);
      let stall = setTimeout(cut, STALL_MS);
      const body = watchBytes(response.body, () => {
        clearTimeout(stall);
        stall = setTimeout(cut, STALL_MS);
      });
      try {
        for await (const event of readEvents(body, connection.signal)) {
          if (event.data === "[DONE]") {
            done = true;
            break;
          }
          let chunk;
          try {
            chunk = JSON.parse(event.data);
          } catch {
            continue; // not JSON: nothing a UI message stream would send; skip it
          }
          terminal = this.message.apply(chunk) ?? terminal;
          if (event.id !== null && /^-?\d+$/.test(event.id)) this.lastSeq = Number(event.id);
          if (this.state === "sending") this._setState("streaming");
          this.onChange(this.message);
        }
      } catch (err) {
        if (this.detached) break;
        if (!isNetworkError(err)) console.warn("answer stream failed", err);
      } finally {
        clearTimeout(stall);
        window.removeEventListener("offline", cut);
        this.controller.signal.removeEventListener("abort", onDetach);
        connection.abort(); // closes the body if it is still open
      }
      if (this.detached) break;
      if (done || terminal) {
        ended = "terminal";
        break;
      }
      // The body ended without the stream's end: the connection was cut. Resume after the
      // last event we have.
      reconnecting = true;
      this._setState("reconnecting", {});
      open = () => this._reopen();
      posting = false;
      if (this.attempts > 0) await sleep(backoff(this.attempts - 1), this.controller.signal);
      this.attempts++;
    }
    this._setState("ended");
    this.onEnded(this.message, ended ?? "detached");
  }
}

/** `body` with `onBytes()` called whenever bytes arrive (keep-alives included). */
function watchBytes(body, onBytes) {
  return body.pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        onBytes();
        controller.enqueue(chunk);
      },
    }),
  );
}
