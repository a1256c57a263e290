// The chat service's HTTP API, as the page uses it.
//
// Every call is same-origin and cookie-authenticated (the guest session cookie is HttpOnly;
// the browser sends it and the Origin header on POST/DELETE by itself). Errors come back as
// `ApiError` with the service's `{"error": {"code", "message"}}` reason; a network failure
// stays a `TypeError` (what fetch throws), which callers treat as "retry later".

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

async function failure(response) {
  let code = "http_" + response.status;
  let message = `the server answered ${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, code, message);
}

async function call(method, path, { body, signal, headers } = {}) {
  const init = { method, signal, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response;
}

const enc = encodeURIComponent;

/**
 * A page of the caller's chats, newest first: `{chats, nextCursor}`; pass `nextCursor` back
 * (null on the last page) for the next page.
 */
export async function listChats(cursor, signal) {
  const query = cursor ? `?cursor=${enc(cursor)}` : "";
  const data = await (await call("GET", `/api/chats${query}`, { signal })).json();
  return { chats: normalizeList(data), nextCursor: data?.nextCursor ?? null };
}

/** `{chat, messages, active}` for one chat; throws ApiError 404 for a missing or foreign one. */
export async function getChat(chatId, signal) {
  const data = await (await call("GET", `/api/chats/${enc(chatId)}`, { signal })).json();
  return normalizeDetail(data, chatId);
}

export async function deleteChat(chatId) {
  await call("DELETE", `/api/chats/${enc(chatId)}`);
}

/** Ask the server to stop the chat's answer (only `messageId`'s, if given). */
export async function stopChat(chatId, messageId) {
  const body = messageId ? { messageId } : {};
  return (await call("POST", `/api/chat/${enc(chatId)}/stop`, { body })).json();
}

/**
 * Send a user message (or, with `trigger` "regenerate-message" and `messageId`, ask for
 * that answer again); resolves to the Response whose body is the UI message stream (SSE).
 * Non-2xx answers throw ApiError; a network failure throws TypeError.
 */
export async function postMessage(chatId, messages, signal, { trigger = "submit-message", messageId } = {}) {
  const last = messages[messages.length - 1];
  return call("POST", "/api/chat", {
    signal,
    headers: { Accept: "text/event-stream" },
    body: { id: chatId, messages, trigger, messageId: messageId ?? last?.id },
  });
}

/** Give the chat a new title; resolves to the chat as the server has it. */
export async function renameChat(chatId, title) {
  return normalizeChat(await (await call("PATCH", `/api/chats/${enc(chatId)}`, { body: { title } })).json());
}

/**
 * Resume the chat's answer: the Response streaming it (everything after `after`, or a full
 * replay when `after` is null), or null when there is nothing to resume (204).
 */
export async function resumeStream(chatId, after, signal) {
  const query = after === null || after === undefined ? "" : `?after=${enc(after)}`;
  const response = await call("GET", `/api/chat/${enc(chatId)}/stream${query}`, {
    signal,
    headers: { Accept: "text/event-stream" },
  });
  return response.status === 204 ? null : response;
}

// -- shapes (see src/unbroken/chat/routes/chats.py) ---------------------------------------

function normalizeChat(raw) {
  return {
    id: raw.id,
    title: raw.title || "New chat",
    updatedAt: raw.updatedAt || raw.createdAt || null,
    active: Boolean(raw.activeStreamId),
  };
}

function normalizeList(data) {
  return (data?.chats ?? []).map(normalizeChat);
}

/** A stored message: the AI SDK UIMessage plus `status` (done, error, stopped, interrupted). */
export function normalizeMessage(raw) {
  return {
    id: raw.id,
    role: raw.role,
    parts: Array.isArray(raw.parts) ? raw.parts : [],
    metadata: raw.metadata ?? null,
    status: raw.status || "done",
    error: raw.error || null,
  };
}

function normalizeDetail(data, chatId) {
  const chat = normalizeChat({ ...data, id: data.id || chatId });
  const raw = data.activeStream;
  const active = raw ? { streamId: raw.id, messageId: raw.messageId, state: raw.state ?? null } : null;
  // An answer still being generated is followed from its stream, not from the store.
  const messages = (data.messages ?? [])
    .map(normalizeMessage)
    .filter((m) => m.status !== "streaming" && m.id !== active?.messageId);
  return { chat, messages, active };
}
