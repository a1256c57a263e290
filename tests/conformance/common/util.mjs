// Shared helpers for the conformance scripts. Each script is started by pytest as
//
//   node common/<script>.mjs '<json config>'
//
// where the config names the version folder (`clientsDir`) whose real npm packages to load
// through its `clients.mjs`. A script prints exactly one JSON line on stdout:
// `{"ok": true, "versions": {...}, "result": ...}` or `{"ok": false, "error": "...", ...}`.
// Everything else (React warnings, debug output) goes to stderr.

import { pathToFileURL } from "node:url";
import { join } from "node:path";

/** Run `fn(config, clients)` and print its result as the single JSON line on stdout. */
export async function main(fn) {
  const config = JSON.parse(process.argv[2] ?? "{}");
  const timeoutMs = config.timeoutMs ?? 30_000;
  let clients = { versions: {} };
  const watchdog = setTimeout(() => {
    finish(2, { ok: false, error: `script timed out after ${timeoutMs} ms`, versions: clients.versions });
  }, timeoutMs);
  const unhandled = [];
  process.on("unhandledRejection", (reason) => {
    unhandled.push(describeError(reason));
  });
  try {
    clients = await import(pathToFileURL(join(config.clientsDir, "clients.mjs")).href);
    const result = await fn(config, clients);
    clearTimeout(watchdog);
    finish(0, { ok: true, versions: clients.versions, unhandledRejections: unhandled, result });
  } catch (error) {
    clearTimeout(watchdog);
    finish(1, { ok: false, versions: clients.versions, unhandledRejections: unhandled, ...describeError(error) });
  }
}

function finish(code, payload) {
  process.stdout.write(`${JSON.stringify(payload)}\n`, () => process.exit(code));
}

export function describeError(error) {
  if (error instanceof Error) {
    return {
      error: `${error.name}: ${error.message}`,
      stack: error.stack,
      cause: error.cause === undefined ? undefined : String(error.cause),
    };
  }
  return { error: String(error) };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `predicate` until it returns a truthy value (returned), or throw after `timeoutMs`. */
export async function waitFor(predicate, { timeoutMs = 10_000, intervalMs = 2, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** A JSON-safe deep copy (drops undefined fields, turns Dates into strings). */
export const plain = (value) => (value === undefined ? null : JSON.parse(JSON.stringify(value)));

/**
 * A `fetch` whose in-flight responses can be cut, like a page reload or a lost network does.
 *
 * `mode: "abort"` aborts the underlying request (the client sees an AbortError);
 * `mode: "network"` errors the body with Node's own cut-connection error
 * (`TypeError: terminated`) after cancelling the real body, so the TCP connection is closed;
 * `mode: "browser"` does the same with Chrome's error (`TypeError: network error`), which
 * ai >= 5.0.2xx recognises as a resumable disconnect.
 */
export function cuttableFetch({ mode = "abort" } = {}) {
  const cutError = () => new TypeError(mode === "browser" ? "network error" : "terminated");
  const live = new Set();
  const requests = [];
  const cuttable = async (url, init = {}) => {
    const controller = new AbortController();
    const outer = init.signal;
    if (outer) {
      if (outer.aborted) controller.abort(outer.reason);
      else outer.addEventListener("abort", () => controller.abort(outer.reason), { once: true });
    }
    requests.push({ method: init.method ?? "GET", url: String(url) });
    const response = await fetch(url, { ...init, signal: controller.signal });
    const record = { response, controller, cut: () => controller.abort() };
    requests.at(-1).status = response.status;
    if ((mode === "network" || mode === "browser") && response.body) {
      const reader = response.body.getReader();
      let cutController;
      const body = new ReadableStream({
        start(c) {
          cutController = c;
        },
        async pull(c) {
          try {
            const { done, value } = await reader.read();
            if (done) c.close();
            else c.enqueue(value);
          } catch (error) {
            c.error(error);
          }
        },
        cancel(reason) {
          return reader.cancel(reason);
        },
      });
      record.cut = () => {
        reader.cancel().catch(() => {});
        try {
          cutController.error(cutError());
        } catch {
          // already closed
        }
      };
      live.add(record);
      return new Response(body, { status: response.status, headers: response.headers });
    }
    live.add(record);
    return response;
  };
  cuttable.cutAll = () => {
    const n = live.size;
    for (const record of live) record.cut();
    live.clear();
    return n;
  };
  cuttable.requests = requests;
  return cuttable;
}

/** A TransformStream that records every chunk passing through it into `into`. */
export function recorder(into) {
  return new TransformStream({
    transform(chunk, controller) {
      into.push(plain(chunk));
      controller.enqueue(chunk);
    },
  });
}

/**
 * Read a UI message chunk stream with the real `readUIMessageStream`: returns the last
 * message snapshot, the number of snapshots and every error the client reported.
 */
export async function assemble(ai, stream, { onSnapshot } = {}) {
  const errors = [];
  const seen = new Set();
  let last = null;
  let snapshots = 0;
  const messages = ai.readUIMessageStream({
    stream,
    terminateOnError: true,
    onError: (error) => {
      seen.add(error);
      errors.push(describeError(error));
    },
  });
  try {
    for await (const message of messages) {
      snapshots += 1;
      last = plain(message);
      if (onSnapshot) onSnapshot(last, snapshots);
    }
  } catch (error) {
    // With terminateOnError the error already reported to onError also ends the iteration.
    if (!seen.has(error)) errors.push(describeError(error));
  }
  return { message: last, snapshots, errors };
}

/** Text of all `text` parts of a v5+ UI message (or "" for null). */
export function textOf(message) {
  if (!message) return "";
  return message.parts
    .filter((part) => part.type === "text")
    .map((part) => part.text)
    .join("");
}

/**
 * Render a hook with the real react-test-renderer, outside `act` (updates from streams arrive
 * asynchronously, like in a browser). Returns `{ current(), unmount() }`.
 */
export function renderHook({ React, TestRenderer }, useHook, { wrap } = {}) {
  globalThis.IS_REACT_ACT_ENVIRONMENT = false;
  const box = { value: undefined, renders: 0 };
  function Probe() {
    box.value = useHook();
    box.renders += 1;
    return null;
  }
  let element = React.createElement(Probe);
  if (wrap) element = wrap(element);
  const renderer = TestRenderer.create(element);
  return {
    current: () => box.value,
    renders: () => box.renders,
    unmount: () => renderer.unmount(),
  };
}

export async function json(response) {
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** Wait until `read()` (JSON-compared) has not changed for `quietMs`; returns the value. */
export async function settle(read, { quietMs = 100, timeoutMs = 5_000 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last = JSON.stringify(read());
  let since = Date.now();
  while (Date.now() - since < quietMs) {
    if (Date.now() > deadline) throw new Error(`value did not settle within ${timeoutMs} ms`);
    await sleep(5);
    const now = JSON.stringify(read());
    if (now !== last) {
      last = now;
      since = Date.now();
    }
  }
  return JSON.parse(last);
}

/**
 * The chat as the example server stores it (`GET {api}/{id}/messages`):
 * `{ messages, activeStreamId }`. With `settled`, wait until no stream is active.
 */
export async function storedChat(api, chatId, { settled = false } = {}) {
  const read = async () => {
    const response = await fetch(`${api}/${encodeURIComponent(chatId)}/messages`);
    if (!response.ok) throw new Error(`GET messages: HTTP ${response.status}`);
    return response.json();
  };
  if (!settled) return read();
  return waitFor(
    async () => {
      const chat = await read();
      return chat.activeStreamId == null ? chat : null;
    },
    { intervalMs: 20, what: "the server to store the answer" },
  );
}
