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
// - Each message offers copy, edit (user messages) and regenerate or retry (the last
//   answer), with the AI SDK's semantics: an edited message replaces the original and every
//   later message; a regenerated answer replaces the last one. The store follows.
//
// Everything the page shows is built with DOM nodes and textContent (markdown.js,
// highlight.js); no string from the server or the user is ever parsed as HTML. The pieces:
// message_view.js (one message and its buttons), chat_list.js, status.js, rename.js,
// storage.js (what this tab remembers), answer.js (following an answer), api.js.

import * as api from "./api.js";
import { AnswerFollower, AssistantMessage } from "./answer.js";
import { fillMessage, installMessageActions, messageText } from "./message_view.js";
import { showChats } from "./chat_list.js";
import { installRename } from "./rename.js";
import { makeStatus } from "./status.js";
import { dropSnapshot, dropView, loadSnapshot, loadView, newId, saveView, writeSnapshot } from "./storage.js";
import { titleOf } from "./title.js";

const POLL_MS = 2000;
const LIST_POLL_MS = 15000;
const SNAPSHOT_EVERY_MS = 400;

const $ = (id) => document.getElementById(id);
const ui = {
  app: $("app"),
  sidebar: $("sidebar"),
  scrim: $("scrim"),
  menu: $("menu"),
  newChat: $("new-chat"),
  chatList: $("chat-list"),
  chatsEmpty: $("chats-empty"),
  moreChats: $("more-chats"),
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
  retry: $("retry"),
  rename: $("rename"),
  titleForm: $("title-form"),
  titleInput: $("title-input"),
  titleCancel: $("title-cancel"),
};

const state = {
  chats: null, // the list, once loaded
  chatsTried: false, // whether the list was asked for yet (the welcome waits for it)
  chatsCursor: null, // where the next page of the list starts (null: nothing more)
  chatsExtended: false, // pages after the first were shown ("Show more")
  chatId: null, // the chat on screen (null: a new chat not sent yet)
  detail: null, // its last `GET /api/chats/{id}`
  messages: [], // stored messages on screen
  pendingUser: null, // the user message just sent, until the store has it
  follower: null, // the AnswerFollower of the answer on screen, while it runs
  live: null, // the AssistantMessage it builds (kept until the store has the answer)
  ended: new Set(), // answers this tab saw end: never re-attach to them
  missing: false, // the chat on screen does not exist (or is not ours)
  loadSeq: 0, // guards against out-of-order loads when navigating quickly
  recheckTimer: null,
  loadFailed: false, // the chat could not be loaded (status says so until it can)
  rechecks: 0, // how often the store was asked for an answer that ended but is not stored
  stopping: false,
  stopRequested: false, // stop pressed before the answer started
  lastAttempt: null, // what "Try again" does after a message could not be sent
  editing: null, // {id, text}: the user message being edited
};

const channel = "BroadcastChannel" in window ? new BroadcastChannel("unbroken-chat") : null;

// -- ids and routes ---------------------------------------------------------------------------

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
  writeSnapshot(state.chatId, { message: f.message.save(), lastSeq: f.lastSeq, savedAt: now });
}

const setStatus = makeStatus(ui);

/** Why a request failed, in words for the status line. */
const reason = (err) => (err instanceof TypeError ? "cannot reach the server" : err.message);

// -- rendering ----------------------------------------------------------------------------------

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
    fillMessage(li, item.message, {
      streaming: item.streaming,
      actions: actionsFor(item, index === items.length - 1),
      editing: state.editing?.id === item.key ? state.editing.text : null,
    });
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

/** The buttons a message offers: copy always; edit, regenerate and retry while idle. */
function actionsFor(item, last) {
  const { message, streaming } = item;
  if (streaming || !message.id) return [];
  const actions = messageText(message) ? ["copy"] : [];
  const idle = !state.follower && !state.missing;
  const stored = state.messages.some((m) => m.id === message.id);
  if (!idle || !stored) return actions;
  if (message.role === "user") actions.push("edit");
  else if (last && message.role === "assistant") {
    actions.push(["error", "interrupted"].includes(message.status) ? "retry" : "regenerate");
  }
  return actions;
}

function renderChatList() {
  showChats(ui.chatList, ui.chatsEmpty, state.chats, state.chatId, confirmDelete);
  ui.moreChats.hidden = !state.chatsCursor;
}

/** The chat's title; null for a new chat, "" while the chat's title is not known yet (no
 * "New chat" flash for a chat that has one). */
function setTitle(title) {
  ui.title.textContent = title === null ? "New chat" : title;
  document.title = title ? `${title} · unbroken` : "unbroken chat";
  ui.rename.hidden = state.chatId === null || state.missing || !title;
}

// -- chats list -------------------------------------------------------------------------------

async function refreshChats() {
  let page;
  try {
    page = await api.listChats();
  } catch (err) {
    if (!(err instanceof TypeError)) console.warn("could not list chats", err);
    state.chatsTried = true;
    renderMessages();
    return;
  }
  state.chatsTried = true;
  // The first page replaces what it holds. Once older pages are shown, they stay below it
  // (a chat that moved up is shown where the first page has it), and so does the place
  // where the next page starts.
  const first = new Set(page.chats.map((c) => c.id));
  const older = state.chatsExtended ? (state.chats ?? []).filter((c) => !first.has(c.id)) : [];
  state.chats = [...page.chats, ...older];
  if (!state.chatsExtended) state.chatsCursor = page.nextCursor;
  if (state.chatId && !state.chats.some((c) => c.id === state.chatId) && (state.pendingUser || state.follower)) {
    // A chat being created right now: show it before the server lists it.
    state.chats.unshift({ id: state.chatId, title: ui.title.textContent, active: true });
  }
  renderChatList();
  renderMessages();
}

/** The next page of the list, below what is shown ("Show more"). */
async function showMoreChats() {
  if (!state.chatsCursor) return;
  ui.moreChats.disabled = true;
  try {
    const page = await api.listChats(state.chatsCursor);
    const shown = new Set((state.chats ?? []).map((c) => c.id));
    const added = page.chats.filter((c) => !shown.has(c.id));
    state.chats = [...(state.chats ?? []), ...added];
    state.chatsCursor = page.nextCursor;
    state.chatsExtended = true;
    renderChatList();
    // The button goes once the list is complete: keep the keyboard's place in the list.
    if (!state.chatsCursor && added.length) {
      ui.chatList.querySelector(`li[data-id="${CSS.escape(added[0].id)}"] a`)?.focus();
    }
  } catch (err) {
    setStatus("error", `could not list more chats: ${reason(err)}`);
  } finally {
    ui.moreChats.disabled = false;
  }
}

/** Delete a chat, once its button was pressed twice (see chat_list.js). */
async function confirmDelete(chatId, button) {
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
  state.editing = null;
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
      setStatus(navigator.onLine ? "error" : "offline", reason(err));
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
    setStatus(last.status, last.status === "error" ? last.error : undefined, { noted: true });
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
    const outcome = message.status === "done" ? "idle" : message.status;
    setStatus(outcome, message.error || undefined, { noted: outcome !== "idle" });
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
  if (state.detail === null && state.messages.length === 0 && chatId === state.chatId) {
    // A new chat whose first message never arrived does not exist: stay a new chat.
    state.chatId = null;
    history.replaceState(null, "", "/");
    state.chats = (state.chats ?? []).filter((c) => c.id !== chatId);
    setTitle(null);
    renderChatList();
  } else {
    loadChat();
  }
  setStatus("error", reason, { retry: state.lastAttempt !== null });
  renderMessages();
}

// -- sending and stopping -------------------------------------------------------------------

function cleanMessage(m) {
  const out = { id: m.id, role: m.role, parts: (m.parts || []).map(({ state: _s, ...p }) => p) };
  if (m.metadata) out.metadata = m.metadata;
  return out;
}

/**
 * The last exchange, once its answer ended, is on screen before the store has it (the chat
 * is reloaded after the end). A message sent meanwhile keeps it there, and in the history.
 */
function keepShown() {
  if (state.follower) return;
  const ids = new Set(state.messages.map((m) => m.id));
  const shown = [];
  if (state.pendingUser && !ids.has(state.pendingUser.id)) shown.push(state.pendingUser);
  const live = state.live;
  if (live?.id && !ids.has(live.id)) shown.push({ ...live.toUIMessage(), status: live.status, error: live.error });
  if (shown.length) state.messages = [...state.messages, ...shown];
  state.pendingUser = null;
  state.live = null;
}

function submit() {
  const text = ui.input.value.replace(/\s+$/, "");
  if (!text.trim()) return;
  if (state.follower) return; // one answer at a time: Stop (or Escape) first; the text stays
  if (state.missing) return;
  keepShown();
  state.lastAttempt = submit; // its text comes back to the input if it cannot be sent
  let chatId = state.chatId;
  if (chatId === null) {
    chatId = newId();
    state.chatId = chatId;
    state.detail = null;
    state.messages = [];
    history.pushState(null, "", `/chat/${chatId}`);
    const title = titleOf(text);
    setTitle(title);
    state.chats = [{ id: chatId, title, active: true }, ...(state.chats ?? [])];
    renderChatList();
  }
  const user = { id: newId("m"), role: "user", parts: [{ type: "text", text }], status: "done" };
  ui.input.value = "";
  autoSize();
  send([...state.messages.map(cleanMessage), cleanMessage(user)], { pendingUser: user });
}

/**
 * Post `history` (its last message is the user's) and follow the answer. As the AI SDK
 * does: `trigger` "regenerate-message" with `messageId` replaces that answer; a user
 * message already in the chat (an edit) replaces it and everything after it.
 */
function send(history_, { pendingUser = null, trigger = "submit-message", messageId } = {}) {
  state.editing = null;
  state.pendingUser = pendingUser;
  state.live = new AssistantMessage(null);
  const follower = makeFollower(state.live, null);
  follower.posted = true;
  renderMessages();
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
  follower.send(history_, { trigger, messageId });
}

/** Answer the last question again: the last answer is replaced. */
function regenerate() {
  const index = state.messages.length - 1;
  const last = state.messages[index];
  if (state.follower || state.missing || last?.role !== "assistant") return;
  state.lastAttempt = regenerate;
  const before = state.messages.slice(0, index);
  state.messages = before; // the old answer goes at once, as it does in the store
  send(before.map(cleanMessage), { trigger: "regenerate-message", messageId: last.id });
}

/** Send an edited user message: it replaces the original, and every later message goes. */
function resend(messageId, text) {
  const index = state.messages.findIndex((m) => m.id === messageId && m.role === "user");
  if (state.follower || index < 0 || !text.trim()) return;
  state.lastAttempt = () => resend(messageId, text);
  const original = state.messages[index];
  const edited = { ...original, parts: [{ type: "text", text }], status: "done" };
  state.messages = state.messages.slice(0, index);
  send([...state.messages.map(cleanMessage), cleanMessage(edited)], { pendingUser: edited, messageId });
}

function startEditing(messageId) {
  const message = state.messages.find((m) => m.id === messageId);
  if (!message || state.follower) return;
  state.editing = { id: messageId, text: messageText(message) };
  renderMessages();
  const input = ui.messages.querySelector(`li[data-key="${CSS.escape(messageId)}"] form.edit textarea`);
  input?.focus();
  input?.setSelectionRange(input.value.length, input.value.length);
}

function stopEditing() {
  const id = state.editing?.id;
  state.editing = null;
  renderMessages();
  ui.messages.querySelector(`li[data-key="${CSS.escape(id ?? "")}"] button[data-action="edit"]`)?.focus();
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
      setStatus("error", `could not stop the answer: ${reason(err)}`);
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
  ui.retry.addEventListener("click", () => state.lastAttempt?.());
  installMessageActions(ui.messages, {
    message: (id) => state.messages.find((m) => m.id === id) ?? (state.live?.id === id ? state.live : null),
    edit: startEditing,
    cancelEdit: stopEditing,
    sendEdit: (id, text) => resend(id, text),
    editing: (text) => {
      if (state.editing) state.editing.text = text;
    },
    regenerate,
  });
  installRename(ui, {
    chatId: () => (state.missing ? null : state.chatId),
    save: api.renameChat,
    saved: (chatId, chat) => {
      const listed = state.chats?.find((c) => c.id === chatId);
      if (listed) listed.title = chat.title;
      renderChatList();
      broadcast({ type: "chat-renamed", chatId });
      if (chatId === state.chatId) setTitle(chat.title);
    },
    failed: (err) => setStatus("error", `could not rename the chat: ${reason(err)}`),
  });
  ui.newChat.addEventListener("click", () => {
    navigate("/");
    ui.input.focus();
  });
  ui.menu.addEventListener("click", () => (ui.app.dataset.sidebar === "open" ? closeSidebar() : openSidebar()));
  ui.scrim.addEventListener("click", closeSidebar);
  ui.moreChats.addEventListener("click", showMoreChats);
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
  route(); // paints what this tab last showed of the chat before its first await
  // The page was hidden until now (see style.css): no "New chat" or empty flash on a reload.
  document.documentElement.classList.remove("booting");
}

init();
