// The unbroken chat page: chat list, streaming answers that survive refreshes, lost
// connections and second tabs, and a stop button that stops the answer everywhere.
//
// How it stays unbroken:
// - An answer is read with fetch + an SSE parser (answer.js); the last `id:` seen is the
//   offset a reconnect resumes from (`?after=`), so nothing is shown twice or lost.
// - On load (or refresh) the page reads `GET /api/chats/{id}`: the stored messages, and the
//   answer being generated if there is one, which it then follows from its stream. While
//   an answer streams, the page keeps a snapshot of it (with its offset) in sessionStorage,
//   so after a refresh the text is back at once and only the rest is fetched.
// - Tabs tell each other about new answers, stops and deletions over a BroadcastChannel,
//   and every tab also polls the open chat, so answers started elsewhere are picked up too.
//
// Everything the page shows is built with DOM nodes and textContent (markdown.js); no
// string from the server or the user is ever parsed as HTML.

import * as api from "./api.js";
import { AnswerFollower, AssistantMessage } from "./answer.js";
import { renderMarkdown, renderPlain } from "./markdown.js";

const POLL_MS = 2000;
const LIST_POLL_MS = 15000;
const SNAPSHOT_EVERY_MS = 400;
const SNAPSHOT_PREFIX = "unbroken.answer.";

const $ = (id) => document.getElementById(id);
const ui = {
  app: $("app"),
  sidebar: $("sidebar"),
  scrim: $("scrim"),
  menu: $("menu"),
  newChat: $("new-chat"),
  chatList: $("chat-list"),
  chatsEmpty: $("chats-empty"),
  title: $("chat-title"),
  connection: $("connection"),
  conversation: $("conversation"),
  empty: $("empty-state"),
  emptyTitle: $("empty-title"),
  notFound: $("not-found"),
  messages: $("messages"),
  status: $("status"),
  composer: $("composer"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
  hint: $("composer-hint"),
};

const state = {
  chats: null, // the list, once loaded
  chatsTried: false, // whether the list was asked for yet (the welcome waits for it)
  chatId: null, // the chat on screen (null: a new chat not sent yet)
  detail: null, // its last `GET /api/chats/{id}`
  messages: [], // stored messages on screen
  pendingUser: null, // the user message just sent, until the store has it
  follower: null, // the AnswerFollower of the answer on screen, while it runs
  live: null, // the AssistantMessage it builds (kept until the store has the answer)
  ended: new Set(), // answers this tab saw end: never re-attach to them
  missing: false, // the chat on screen does not exist (or is not ours)
  loadSeq: 0, // guards against out-of-order loads when navigating quickly
  statusTimer: null,
  recheckTimer: null,
  loadFailed: false, // the chat could not be loaded (status says so until it can)
  rechecks: 0, // how often the store was asked for an answer that ended but is not stored
  stopping: false,
  stopRequested: false, // stop pressed before the answer started
};

const channel = "BroadcastChannel" in window ? new BroadcastChannel("unbroken-chat") : null;

// -- ids and routes ---------------------------------------------------------------------------

const ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/**
 * A random id of letters and digits (~131 bits), what the service accepts for chat and
 * message ids (they must start with a letter or digit). crypto.getRandomValues works
 * outside secure contexts too (a plain-http LAN address), unlike crypto.randomUUID.
 */
function newId(prefix = "") {
  let id = "";
  while (id.length < 22) {
    for (const byte of crypto.getRandomValues(new Uint8Array(32))) {
      if (byte < 248 && id.length < 22) id += ID_ALPHABET[byte % 62]; // 248 = 4 * 62: unbiased
    }
  }
  return prefix + id;
}

function routeChatId(path = location.pathname) {
  const m = /^\/chat\/([A-Za-z0-9][A-Za-z0-9._:~-]{0,127})\/?$/.exec(path);
  return m ? m[1] : null;
}

function navigate(path, { replace = false } = {}) {
  if (path !== location.pathname) history[replace ? "replaceState" : "pushState"](null, "", path);
  closeSidebar();
  route();
}

// -- snapshots (refresh without a flash) ------------------------------------------------------

let lastSnapshotAt = 0;

function saveSnapshot(force = false) {
  const f = state.follower;
  if (!f || !f.message.id || f.lastSeq === null || !state.chatId) return;
  const now = Date.now();
  if (!force && now - lastSnapshotAt < SNAPSHOT_EVERY_MS) return;
  lastSnapshotAt = now;
  try {
    sessionStorage.setItem(
      SNAPSHOT_PREFIX + state.chatId,
      JSON.stringify({ message: f.message.save(), lastSeq: f.lastSeq, savedAt: now }),
    );
  } catch {
    // storage full or disabled: a refresh then replays the answer instead
  }
}

/** This tab's snapshot of the chat's running answer (of `messageId`, if given). */
function loadSnapshot(chatId, messageId = null) {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SNAPSHOT_PREFIX + chatId) || "null");
    if (!saved?.message?.id || !Number.isInteger(saved.lastSeq)) return null;
    if (messageId === null || saved.message.id === messageId) return saved;
  } catch {
    // unreadable: ignore
  }
  return null;
}

function dropSnapshot(chatId) {
  try {
    sessionStorage.removeItem(SNAPSHOT_PREFIX + chatId);
  } catch {
    // ignore
  }
}

const VIEW_PREFIX = "unbroken.view.";
const VIEW_MAX_CHARS = 400_000;

/** Remember what a chat looked like, to paint it at once on the next load of this tab. */
function saveView(chatId, detail) {
  try {
    const json = JSON.stringify({ title: detail.chat.title, messages: detail.messages });
    if (json.length <= VIEW_MAX_CHARS) sessionStorage.setItem(VIEW_PREFIX + chatId, json);
    else sessionStorage.removeItem(VIEW_PREFIX + chatId);
  } catch {
    // storage full or disabled: the page then paints after loading
  }
}

function loadView(chatId) {
  try {
    const view = JSON.parse(sessionStorage.getItem(VIEW_PREFIX + chatId) || "null");
    if (view && Array.isArray(view.messages)) return view;
  } catch {
    // unreadable: ignore
  }
  return null;
}

function dropView(chatId) {
  try {
    sessionStorage.removeItem(VIEW_PREFIX + chatId);
  } catch {
    // ignore
  }
}

// -- status line ------------------------------------------------------------------------------

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

function setStatus(kind, detail) {
  clearTimeout(state.statusTimer);
  let text = STATUS_TEXT[kind] ?? "";
  if (kind === "error") text = `Error: ${detail || "something went wrong"}`;
  ui.status.dataset.state = kind;
  ui.status.textContent = text;
  const running = ["sending", "streaming", "reconnecting", "live", "stopping"].includes(kind);
  ui.app.dataset.answer = running ? "running" : "idle";
  ui.stop.hidden = !running;
  ui.send.hidden = running;
  if (kind === "live") {
    // "Live again" is news for a moment, then the answer simply streams.
    state.statusTimer = setTimeout(() => {
      if (ui.status.dataset.state === "live") setStatus("streaming");
    }, 2500);
  }
}

// -- rendering ----------------------------------------------------------------------------------

const rendered = new WeakMap(); // element -> the signature of what it shows

function messageText(message) {
  return (message.parts || []).filter((p) => p.type === "text").map((p) => p.text || "").join("");
}

const NOTES = {
  stopped: "Stopped",
  interrupted: "Interrupted: the server lost this answer",
  error: "Error",
};

/** `el`, updated by `fill` only when `sig` differs from what it shows. */
function update(el, sig, fill) {
  if (rendered.get(el) === sig) return;
  rendered.set(el, sig);
  fill(el);
}

function child(li, selector, make, before = null) {
  let el = li.querySelector(`:scope > ${selector}`);
  if (!el) {
    el = make();
    li.insertBefore(el, before);
  }
  return el;
}

/**
 * Show `message` in `li`. Each piece (reasoning, text, tools, note) is rebuilt only when it
 * changed, so an open "Reasoning" stays open and a selection in earlier messages stays put
 * while an answer streams.
 */
function fillMessage(li, message, streaming) {
  const status = streaming ? "streaming" : message.status || "done";
  li.className = `message ${message.role}`;
  li.dataset.role = message.role;
  li.dataset.id = message.id || "";
  li.dataset.status = status;
  li.setAttribute("aria-busy", streaming ? "true" : "false");

  const who = child(li, ".who", () => document.createElement("span"));
  who.className = "who";
  who.textContent = message.role === "user" ? "You" : "Assistant";

  const parts = message.parts || [];
  const text = messageText(message);
  const reasoning = parts.filter((p) => p.type === "reasoning" && p.text).map((p) => p.text).join("\n\n");
  let details = li.querySelector(":scope > details.reasoning");
  if (reasoning) {
    details ??= child(li, "details.reasoning", () => {
      const d = document.createElement("details");
      d.className = "reasoning";
      const summary = document.createElement("summary");
      const body = document.createElement("div");
      body.className = "reasoning-text";
      d.append(summary, body);
      return d;
    }, who.nextSibling);
    details.querySelector("summary").textContent = streaming && !text ? "Thinking…" : "Reasoning";
    update(details.querySelector(".reasoning-text"), reasoning, (el) => el.replaceChildren(renderPlain(reasoning)));
  } else if (details) {
    details.remove();
  }

  const body = child(li, ".body", () => {
    const el = document.createElement("div");
    el.className = "body";
    return el;
  });
  const tools = parts.filter((p) => p.type === "dynamic-tool" || p.type?.startsWith("tool-"));
  const toolSig = tools.map((t) => `${t.toolName}:${t.state}`).join(",");
  const waiting = streaming && !text && !reasoning;
  update(body, `${message.role}|${waiting}|${toolSig}|${text}`, (el) => {
    el.replaceChildren(message.role === "user" ? renderPlain(text) : renderMarkdown(text));
    for (const tool of tools) {
      const box = document.createElement("div");
      box.className = "tool";
      box.textContent = `Tool ${tool.toolName || tool.type.slice(5)}: ${tool.state || ""}`;
      el.append(box);
    }
    if (waiting) {
      const dots = document.createElement("span");
      dots.className = "typing";
      dots.setAttribute("role", "img");
      dots.setAttribute("aria-label", "The answer is on its way");
      el.append(dots);
    }
  });

  let note = li.querySelector(":scope > .note");
  if (NOTES[status]) {
    note ??= child(li, ".note", () => document.createElement("p"));
    note.className = `note ${status}`;
    note.textContent = status === "error" && message.error ? `Error: ${message.error}` : NOTES[status];
  } else if (note) {
    note.remove();
  }
}

let renderQueued = false;

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  const run = () => {
    if (!renderQueued) return;
    renderQueued = false;
    renderMessages();
  };
  // requestAnimationFrame does not run in background tabs; the timer covers them.
  requestAnimationFrame(run);
  setTimeout(run, 120);
}

function renderMessages() {
  const items = state.messages.map((m) => ({ key: m.id, message: m, streaming: false }));
  const ids = new Set(state.messages.map((m) => m.id));
  if (state.pendingUser && !ids.has(state.pendingUser.id)) {
    items.push({ key: state.pendingUser.id, message: state.pendingUser, streaming: false });
  }
  if (state.live && !ids.has(state.live.id)) {
    const running = Boolean(state.follower) && state.live.status === "streaming";
    items.push({ key: "live", message: state.live, streaming: running });
  }

  const list = ui.messages;
  const nearBottom = ui.conversation.scrollHeight - ui.conversation.scrollTop - ui.conversation.clientHeight < 120;
  const existing = new Map([...list.children].map((li) => [li.dataset.key, li]));
  items.forEach((item, index) => {
    let li = existing.get(item.key);
    if (li) existing.delete(item.key);
    else {
      li = document.createElement("li");
      li.dataset.key = item.key;
    }
    fillMessage(li, item.message, item.streaming);
    if (list.children[index] !== li) list.insertBefore(li, list.children[index] ?? null);
  });
  for (const li of existing.values()) li.remove();

  const hasMessages = items.length > 0;
  // Nothing to show yet: the chat is loading, or (for the welcome) the list is.
  const loading = state.chatId !== null ? state.detail === null : !state.chatsTried;
  ui.empty.hidden = hasMessages || state.missing || loading;
  ui.notFound.hidden = !state.missing;
  ui.messages.hidden = state.missing;
  ui.composer.hidden = state.missing;
  ui.hint.hidden = state.missing;
  if (!hasMessages && !state.missing) {
    const newUser = state.chats !== null && state.chats.length === 0;
    ui.emptyTitle.textContent = newUser ? "Welcome! Ask anything" : "Ask anything";
  }
  if (nearBottom) ui.conversation.scrollTop = ui.conversation.scrollHeight;
}

function renderChatList() {
  const chats = state.chats ?? [];
  ui.chatsEmpty.hidden = state.chats === null || chats.length > 0;
  const existing = new Map([...ui.chatList.children].map((li) => [li.dataset.id, li]));
  chats.forEach((chat, index) => {
    let li = existing.get(chat.id);
    if (li) existing.delete(chat.id);
    else li = createChatItem(chat);
    const link = li.querySelector("a");
    link.textContent = chat.title;
    link.title = chat.title;
    if (chat.id === state.chatId) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
    li.dataset.active = chat.active ? "true" : "false";
    li.querySelector(".delete").setAttribute("aria-label", `Delete chat: ${chat.title}`);
    if (ui.chatList.children[index] !== li) ui.chatList.insertBefore(li, ui.chatList.children[index] ?? null);
  });
  for (const li of existing.values()) li.remove();
}

function createChatItem(chat) {
  const li = document.createElement("li");
  li.dataset.id = chat.id;
  const link = document.createElement("a");
  link.href = `/chat/${encodeURIComponent(chat.id)}`;
  link.dataset.nav = "";
  const del = document.createElement("button");
  del.type = "button";
  del.className = "delete";
  del.textContent = "✕";
  del.addEventListener("click", () => confirmDelete(chat.id, del));
  li.append(link, del);
  return li;
}

function setTitle(title) {
  ui.title.textContent = title || "New chat";
  document.title = title ? `${title} · unbroken` : "unbroken chat";
}

// -- chats list -------------------------------------------------------------------------------

async function refreshChats() {
  try {
    state.chats = await api.listChats();
  } catch (err) {
    if (!(err instanceof TypeError)) console.warn("could not list chats", err);
    state.chatsTried = true;
    renderMessages();
    return;
  }
  state.chatsTried = true;
  if (state.chatId && !state.chats.some((c) => c.id === state.chatId) && (state.pendingUser || state.follower)) {
    // A chat being created right now: show it before the server lists it.
    state.chats.unshift({ id: state.chatId, title: ui.title.textContent, active: true });
  }
  renderChatList();
  renderMessages();
}

async function confirmDelete(chatId, button) {
  if (button.dataset.confirm !== "true") {
    button.dataset.confirm = "true";
    button.textContent = "Delete?";
    const chat = state.chats?.find((c) => c.id === chatId);
    button.setAttribute("aria-label", `Confirm: delete chat ${chat?.title ?? ""}`.trim());
    setTimeout(() => {
      button.dataset.confirm = "false";
      button.textContent = "✕";
      button.setAttribute("aria-label", `Delete chat: ${chat?.title ?? ""}`);
    }, 4000);
    return;
  }
  button.disabled = true;
  try {
    await api.deleteChat(chatId);
  } catch (err) {
    if (!(err instanceof api.ApiError && err.status === 404)) {
      button.disabled = false;
      setStatus("error", `could not delete the chat: ${err.message}`);
      return;
    }
  }
  dropSnapshot(chatId);
  dropView(chatId);
  state.chats = (state.chats ?? []).filter((c) => c.id !== chatId);
  renderChatList();
  broadcast({ type: "chat-deleted", chatId });
  if (state.chatId === chatId) navigate("/");
}

// -- one chat ---------------------------------------------------------------------------------

function detach({ keep = false } = {}) {
  if (keep) saveSnapshot(true); // coming back to this chat resumes from here
  if (state.follower) state.follower.detach();
  state.follower = null;
  state.live = null;
  state.pendingUser = null;
  state.stopping = false;
  state.stopRequested = false;
}

async function route() {
  const chatId = routeChatId();
  if (chatId === state.chatId && chatId !== null && !state.missing) return;
  detach({ keep: true });
  state.chatId = chatId;
  state.loadFailed = false;
  state.detail = null;
  state.messages = [];
  state.missing = false;
  renderChatList();
  if (chatId === null) {
    setTitle(null);
    setStatus("idle");
    renderMessages();
    ui.input.focus();
    return;
  }
  // Paint what this tab last showed of the chat (a refresh, or coming back to it) at once,
  // running answer included: no flash of lost text. The server's answer then corrects it.
  const view = loadView(chatId);
  const chat = state.chats?.find((c) => c.id === chatId);
  setTitle(view?.title ?? chat?.title ?? "");
  if (view) {
    state.messages = view.messages;
    const snapshot = loadSnapshot(chatId);
    if (snapshot && !view.messages.some((m) => m.id === snapshot.message.id)) {
      state.live = AssistantMessage.restore(snapshot.message);
    }
  }
  setStatus("loading");
  renderMessages();
  await loadChat({ first: true });
}

/**
 * Read the chat from the server and show it: stored messages, and the running answer if
 * there is one (followed from its stream). Also the reconciliation after an answer ends
 * and the poll that picks up answers started in other tabs.
 */
async function loadChat({ first = false } = {}) {
  const chatId = state.chatId;
  if (chatId === null) return;
  const seq = ++state.loadSeq;
  let detail;
  try {
    detail = await api.getChat(chatId);
  } catch (err) {
    if (seq !== state.loadSeq || chatId !== state.chatId) return;
    if (err instanceof api.ApiError && err.status === 404) {
      if (state.pendingUser && !state.detail) return; // a new chat not stored yet
      dropView(chatId);
      dropSnapshot(chatId);
      detach();
      state.missing = true;
      state.messages = [];
      setTitle("Chat not found");
      setStatus("idle");
      renderMessages();
      return;
    }
    if (first || state.loadFailed) {
      state.loadFailed = true; // the poll tries again; its success clears this
      setStatus(navigator.onLine ? "error" : "offline", err instanceof TypeError ? "cannot reach the server" : err.message);
    }
    return;
  }
  if (seq !== state.loadSeq || chatId !== state.chatId) return; // navigated away meanwhile
  state.detail = detail;
  state.missing = false;
  state.messages = detail.messages;
  saveView(chatId, detail);
  setTitle(detail.chat.title);
  if (state.pendingUser && detail.messages.some((m) => m.id === state.pendingUser.id)) state.pendingUser = null;
  const active = detail.active;
  let settled = false;
  if (state.live && !state.follower && active?.messageId !== state.live.id) {
    if (detail.messages.some((m) => m.id === state.live.id)) {
      state.live = null; // the store has the answer now: show the stored one
      settled = true;
    } else if (!state.ended.has(state.live.id) || ++state.rechecks > 50) {
      state.live = null; // a painted snapshot of an answer that is gone
    }
  }
  if (active && !state.ended.has(active.messageId) && !(state.follower && state.follower.messageId === active.messageId)) {
    if (!state.follower || state.follower.messageId) attach(active);
  }
  // The stored status is the truth about how an answer ended (the stream cannot tell an
  // interrupted answer from a failed one).
  if ((first || settled || state.loadFailed) && !state.follower) showLastOutcome();
  state.loadFailed = false;
  renderMessages();
  clearTimeout(state.recheckTimer);
  if (state.live && !state.follower) {
    // The answer ended but is not stored yet (the server stores it right after): look again.
    state.recheckTimer = setTimeout(() => chatId === state.chatId && loadChat(), 400);
  }
}

/** After loading a chat with nothing running: say how its last answer ended, if badly. */
function showLastOutcome() {
  const last = state.messages[state.messages.length - 1];
  if (last?.role === "assistant" && ["stopped", "interrupted", "error"].includes(last.status)) {
    setStatus(last.status, last.status === "error" ? last.error : undefined);
  } else {
    setStatus("idle");
  }
}

/** Follow the chat's running answer, from a snapshot's offset when this tab has one. */
function attach(active) {
  if (state.follower) state.follower.detach();
  const snapshot = loadSnapshot(state.chatId, active.messageId);
  const message = snapshot ? AssistantMessage.restore(snapshot.message) : new AssistantMessage(active.messageId);
  state.live = message;
  state.stopping = false;
  const follower = makeFollower(message, snapshot ? snapshot.lastSeq : null);
  setStatus("loading"); // "streaming" once the stream answers
  renderMessages();
  follower.resume();
}

function makeFollower(message, lastSeq) {
  const chatId = state.chatId;
  const follower = new AnswerFollower({
    chatId,
    message,
    lastSeq,
    onChange: (m) => {
      if (state.follower !== follower) return;
      state.live = m;
      if (state.stopRequested && m.id) {
        state.stopRequested = false;
        stop();
      }
      saveSnapshot();
      scheduleRender();
    },
    onState: (kind, info) => {
      if (state.follower !== follower) return;
      if (kind === "ended") return;
      if (kind === "streaming" && (state.stopping || state.stopRequested)) return;
      if (kind === "streaming" && follower.announced !== true && follower.posted) {
        follower.announced = true;
        broadcast({ type: "answer-started", chatId });
        refreshChats();
      }
      setStatus(kind, info?.reason);
    },
    onEnded: (m, reason, err) => {
      if (state.follower !== follower) return;
      answerEnded(follower, m, reason, err);
    },
  });
  state.follower = follower;
  return follower;
}

function answerEnded(follower, message, reason, err) {
  const chatId = follower.chatId;
  state.follower = null;
  state.stopping = false;
  state.stopRequested = false;
  if (message.id) state.ended.add(message.id);
  state.rechecks = 0;
  dropSnapshot(chatId);
  if (chatId !== state.chatId) return;
  // A send whose answer never started: the message may or may not have reached the server.
  const unsure = follower.posted && !message.id;
  if (reason === "failed") {
    state.live = null;
    if (unsure && err instanceof api.ApiError && err.status === 404 && state.detail === null) {
      notSent(chatId, "your message was not sent: the connection was lost. Send it again.");
      return;
    }
    // The request itself was refused (bad input, too large, the chat is not ours…).
    notSent(chatId, err?.message);
    return;
  }
  if (reason === "gone") {
    // Nothing left to resume: the answer ended while we were away. The store has it.
    if (!message.id || message.parts.length === 0) state.live = null;
    setStatus("idle");
  } else {
    setStatus(message.status === "done" ? "idle" : message.status, message.error || undefined);
  }
  renderMessages();
  broadcast({ type: "answer-ended", chatId });
  loadChat().then(() => {
    if (reason !== "gone" || chatId !== state.chatId) return;
    const pending = state.pendingUser;
    if (unsure && pending && !state.messages.some((m) => m.id === pending.id) && !state.follower) {
      notSent(chatId, "your message was not sent: the connection was lost. Send it again.");
    } else {
      showLastOutcome();
    }
  });
  refreshChats();
}

/** The user's message did not make it: give its text back, say why. */
function notSent(chatId, reason) {
  const pending = state.pendingUser;
  if (pending && !state.messages.some((m) => m.id === pending.id)) {
    if (!ui.input.value) ui.input.value = messageText(pending);
    state.pendingUser = null;
    autoSize();
  }
  if (state.detail === null && chatId === state.chatId) {
    // A new chat whose first message never arrived does not exist: stay a new chat.
    state.chatId = null;
    history.replaceState(null, "", "/");
    state.chats = (state.chats ?? []).filter((c) => c.id !== chatId);
    setTitle(null);
    renderChatList();
  } else {
    loadChat();
  }
  setStatus("error", reason);
  renderMessages();
}

// -- sending and stopping -------------------------------------------------------------------

function cleanMessage(m) {
  const out = { id: m.id, role: m.role, parts: (m.parts || []).map(({ state: _s, ...p }) => p) };
  if (m.metadata) out.metadata = m.metadata;
  return out;
}

function submit() {
  const text = ui.input.value.replace(/\s+$/, "");
  if (!text.trim()) return;
  if (state.follower) return; // one answer at a time: Stop (or Escape) first; the text stays
  if (state.missing) return;
  let chatId = state.chatId;
  if (chatId === null) {
    chatId = newId();
    state.chatId = chatId;
    state.detail = null;
    state.messages = [];
    history.pushState(null, "", `/chat/${chatId}`);
    const title = text.split(/\s+/).join(" ").slice(0, 80);
    setTitle(title);
    state.chats = [{ id: chatId, title, active: true }, ...(state.chats ?? [])];
    renderChatList();
  }
  const user = { id: newId("m"), role: "user", parts: [{ type: "text", text }], status: "done" };
  state.pendingUser = user;
  state.live = new AssistantMessage(null);
  ui.input.value = "";
  autoSize();
  const history_ = [...state.messages.map(cleanMessage), cleanMessage(user)];
  const follower = makeFollower(state.live, null);
  follower.posted = true;
  renderMessages();
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
  follower.send(history_);
}

async function stop() {
  const follower = state.follower;
  if (!follower || state.stopping) return;
  if (!follower.messageId) {
    // Not started yet: stop it the moment it does (a stop now would find nothing to stop).
    state.stopRequested = true;
    setStatus("stopping");
    return;
  }
  state.stopping = true;
  setStatus("stopping");
  try {
    await api.stopChat(follower.chatId, follower.messageId);
    broadcast({ type: "answer-stopped", chatId: follower.chatId });
  } catch (err) {
    state.stopping = false;
    if (state.follower === follower) {
      setStatus("error", `could not stop the answer: ${err instanceof TypeError ? "cannot reach the server" : err.message}`);
    }
  }
  // The stream itself now ends with `abort`, which ends the follower ("Stopped").
}

// -- tabs -------------------------------------------------------------------------------------

function broadcast(message) {
  try {
    channel?.postMessage(message);
  } catch {
    // closed channel: ignore
  }
}

channel?.addEventListener("message", (event) => {
  const msg = event.data || {};
  if (msg.type === "chat-deleted") {
    dropView(msg.chatId);
    dropSnapshot(msg.chatId);
    state.chats = (state.chats ?? []).filter((c) => c.id !== msg.chatId);
    renderChatList();
    if (msg.chatId === state.chatId) {
      detach();
      state.missing = true;
      setTitle("Chat not found");
      setStatus("idle");
      renderMessages();
    }
    return;
  }
  refreshChats();
  if (msg.chatId && msg.chatId === state.chatId && !state.follower) loadChat();
});

// -- the page ---------------------------------------------------------------------------------

function autoSize() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 200)}px`;
}

function openSidebar() {
  ui.app.dataset.sidebar = "open";
  ui.scrim.hidden = false;
  ui.menu.setAttribute("aria-expanded", "true");
  ui.menu.setAttribute("aria-label", "Hide chats");
}

function closeSidebar() {
  if (ui.app.dataset.sidebar !== "open") return;
  ui.app.dataset.sidebar = "closed";
  ui.scrim.hidden = true;
  ui.menu.setAttribute("aria-expanded", "false");
  ui.menu.setAttribute("aria-label", "Show chats");
}

function updateConnection() {
  ui.connection.dataset.online = navigator.onLine ? "true" : "false";
  ui.connection.textContent = navigator.onLine ? "" : "Offline";
}

function init() {
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      submit();
    }
  });
  ui.input.addEventListener("input", autoSize);
  ui.stop.addEventListener("click", stop);
  ui.newChat.addEventListener("click", () => {
    navigate("/");
    ui.input.focus();
  });
  ui.menu.addEventListener("click", () => (ui.app.dataset.sidebar === "open" ? closeSidebar() : openSidebar()));
  ui.scrim.addEventListener("click", closeSidebar);
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    if (ui.app.dataset.sidebar === "open") {
      closeSidebar();
      ui.menu.focus();
    } else if (state.follower) {
      event.preventDefault();
      stop();
    }
  });
  document.addEventListener("click", (event) => {
    const link = event.target.closest?.("a[data-nav]");
    if (!link || event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    navigate(new URL(link.href).pathname);
  });
  window.addEventListener("popstate", () => route());
  window.addEventListener("pagehide", () => saveSnapshot(true));
  window.addEventListener("online", () => {
    updateConnection();
    if (!state.follower) loadChat();
  });
  window.addEventListener("offline", updateConnection);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && !state.follower) {
      loadChat();
      refreshChats();
    }
  });
  // Answers started in another browser or device: look at the open chat now and then.
  setInterval(() => {
    if (document.visibilityState === "visible" && state.chatId && !state.follower && !state.missing) loadChat();
  }, POLL_MS);
  setInterval(() => document.visibilityState === "visible" && refreshChats(), LIST_POLL_MS);

  updateConnection();
  setStatus("idle");
  refreshChats();
  route();
}

init();
