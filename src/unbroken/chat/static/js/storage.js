// What this tab keeps in sessionStorage, to paint a chat at once when it is loaded again
// (a refresh, or coming back to it): the chat as last shown, and a snapshot of the answer
// being followed with the sequence number it got to. And the ids the page makes.

const SNAPSHOT_PREFIX = "unbroken.answer.";
const VIEW_PREFIX = "unbroken.view.";
const VIEW_MAX_CHARS = 400_000;

const ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/**
 * A random id of letters and digits (~131 bits), what the service accepts for chat and
 * message ids (they must start with a letter or digit). crypto.getRandomValues works
 * outside secure contexts too (a plain-http LAN address), unlike crypto.randomUUID.
 */
export function newId(prefix = "") {
  let id = "";
  while (id.length < 22) {
    for (const byte of crypto.getRandomValues(new Uint8Array(32))) {
      if (byte < 248 && id.length < 22) id += ID_ALPHABET[byte % 62]; // 248 = 4 * 62: unbiased
    }
  }
  return prefix + id;
}

/** Keep `snapshot` ({message, lastSeq, savedAt}) of the chat's running answer. */
export function writeSnapshot(chatId, snapshot) {
  try {
    sessionStorage.setItem(SNAPSHOT_PREFIX + chatId, JSON.stringify(snapshot));
  } catch {
    // storage full or disabled: a refresh then replays the answer instead
  }
}

/** This tab's snapshot of the chat's running answer (of `messageId`, if given). */
export function loadSnapshot(chatId, messageId = null) {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SNAPSHOT_PREFIX + chatId) || "null");
    if (!saved?.message?.id || !Number.isInteger(saved.lastSeq)) return null;
    if (messageId === null || saved.message.id === messageId) return saved;
  } catch {
    // unreadable: ignore
  }
  return null;
}

export function dropSnapshot(chatId) {
  try {
    sessionStorage.removeItem(SNAPSHOT_PREFIX + chatId);
  } catch {
    // ignore
  }
}

/** Remember what a chat looked like, to paint it at once on the next load of this tab. */
export function saveView(chatId, detail) {
  try {
    const json = JSON.stringify({ title: detail.chat.title, messages: detail.messages });
    if (json.length <= VIEW_MAX_CHARS) sessionStorage.setItem(VIEW_PREFIX + chatId, json);
    else sessionStorage.removeItem(VIEW_PREFIX + chatId);
  } catch {
    // storage full or disabled: the page then paints after loading
  }
}

export function loadView(chatId) {
  try {
    const view = JSON.parse(sessionStorage.getItem(VIEW_PREFIX + chatId) || "null");
    if (view && Array.isArray(view.messages)) return view;
  } catch {
    // unreadable: ignore
  }
  return null;
}

export function dropView(chatId) {
  try {
    sessionStorage.removeItem(VIEW_PREFIX + chatId);
  } catch {
    // ignore
  }
}
