// One message on screen: who wrote it, its reasoning, its formatted text and tools, how it
// ended (a note under it), its actions (copy, edit, regenerate, retry) and, while it is
// being edited, the edit form.
//
// Each piece is rebuilt only when what it shows changed, so an open "Reasoning" stays open
// and a selection in earlier messages stays put while an answer streams. Buttons carry
// `data-action`; the page handles their clicks in one place (app.js).

import { renderMarkdown, renderPlain } from "./markdown.js";

const rendered = new WeakMap(); // element -> the signature of what it shows

export function messageText(message) {
  return (message.parts || []).filter((p) => p.type === "text").map((p) => p.text || "").join("");
}

const NOTES = {
  stopped: "Stopped",
  interrupted: "Interrupted: the server lost this answer",
  error: "Error",
};

const ACTION_LABELS = {
  copy: "Copy",
  edit: "Edit",
  regenerate: "Regenerate",
  retry: "Retry",
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

function button(action, label, className = "action") {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.dataset.action = action;
  b.textContent = label;
  return b;
}

/**
 * Show `message` in `li`. `options`: `streaming` (the answer is arriving), `actions` (the
 * buttons to offer, e.g. ["copy", "edit"]), `editing` (the text of the edit form, or null).
 */
export function fillMessage(li, message, { streaming = false, actions = [], editing = null } = {}) {
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
  body.hidden = editing !== null;
  const tools = parts.filter((p) => p.type === "dynamic-tool" || p.type?.startsWith("tool-"));
  const toolSig = tools.map((t) => `${t.toolName}:${t.state}`).join(",");
  const waiting = streaming && !text && !reasoning;
  update(body, `${message.role}|${waiting}|${streaming}|${toolSig}|${text}`, (el) => {
    el.replaceChildren(message.role === "user" ? renderPlain(text) : renderMarkdown(text));
    if (!streaming) {
      for (const pre of el.querySelectorAll("pre")) {
        const copy = button("copy-code", "Copy code", "copy-code");
        copy.setAttribute("aria-label", `Copy code${pre.dataset.lang ? ` (${pre.dataset.lang})` : ""}`);
        pre.append(copy);
      }
    }
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

  fillEditor(li, body, editing);

  let note = li.querySelector(":scope > .note");
  if (NOTES[status]) {
    note ??= child(li, ".note", () => document.createElement("p"));
    note.className = `note ${status}`;
    note.textContent = status === "error" && message.error ? `Error: ${message.error}` : NOTES[status];
  } else if (note) {
    note.remove();
  }

  let bar = li.querySelector(":scope > .actions");
  if (actions.length && editing === null) {
    bar ??= child(li, ".actions", () => {
      const el = document.createElement("div");
      el.className = "actions";
      el.setAttribute("role", "group");
      return el;
    });
    const who = message.role === "user" ? "your message" : "the answer";
    update(bar, actions.join(","), (el) => {
      el.setAttribute("aria-label", `Actions for ${who}`);
      el.replaceChildren(...actions.map((action) => button(action, ACTION_LABELS[action])));
    });
  } else if (bar) {
    bar.remove();
  }
}

/** The edit form of a user message (`editing`: its text), or none (null). */
function fillEditor(li, body, editing) {
  let form = li.querySelector(":scope > form.edit");
  if (editing === null) {
    form?.remove();
    return;
  }
  if (form) return; // keep what is being typed
  form = document.createElement("form");
  form.className = "edit";
  const label = document.createElement("label");
  label.className = "visually-hidden";
  const input = document.createElement("textarea");
  input.name = "text";
  input.id = `edit-${li.dataset.id}`;
  input.rows = 3;
  input.value = editing;
  label.htmlFor = input.id;
  label.textContent = "Edit your message";
  const send = button("edit-send", "Send", "button primary");
  send.type = "submit";
  const cancel = button("edit-cancel", "Cancel", "button");
  const row = document.createElement("div");
  row.className = "edit-buttons";
  row.append(cancel, send);
  form.append(label, input, row);
  body.after(form);
}

/**
 * Handle the buttons and edit forms of the messages in `list` (one listener each, for
 * every message). `handlers`: `message(id)` (the message with that id), `edit(key)`,
 * `cancelEdit()`, `sendEdit(id, text)`, `editing(text)` (typed in the form), `regenerate()`.
 */
export function installMessageActions(list, handlers) {
  list.addEventListener("click", async (event) => {
    const target = event.target.closest?.("button[data-action]");
    if (!target || target.type === "submit") return;
    const li = target.closest("li.message");
    const id = li?.dataset.key;
    switch (target.dataset.action) {
      case "copy":
        flashCopied(target, await copyText(messageText(handlers.message(li?.dataset.id) ?? {})));
        break;
      case "copy-code":
        flashCopied(target, await copyText(target.closest("pre")?.querySelector("code")?.textContent ?? ""));
        break;
      case "edit":
        handlers.edit(id);
        break;
      case "edit-cancel":
        handlers.cancelEdit();
        break;
      case "regenerate":
      case "retry":
        handlers.regenerate();
        break;
      default:
    }
  });
  list.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = event.target.closest("li.message")?.dataset.key;
    const text = (event.target.querySelector("textarea")?.value ?? "").replace(/\s+$/, "");
    if (id && text.trim()) handlers.sendEdit(id, text);
  });
  list.addEventListener("keydown", (event) => {
    if (!event.target.matches?.("form.edit textarea")) return;
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation(); // not the page's Escape (stop the answer)
      handlers.cancelEdit();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      event.target.form.requestSubmit();
    }
  });
  list.addEventListener("input", (event) => {
    if (event.target.matches?.("form.edit textarea")) handlers.editing(event.target.value);
  });
}

/** Say on `button` for a moment whether the copy worked. */
function flashCopied(button, ok) {
  const label = button.dataset.label ?? button.textContent;
  button.dataset.label = label;
  button.textContent = ok ? "Copied" : "Copy failed";
  button.dataset.copied = ok ? "true" : "false";
  setTimeout(() => {
    button.textContent = label;
    delete button.dataset.copied;
  }, 1500);
}

/** Put `text` on the clipboard; resolves to whether it worked. Outside a secure context
 * (a plain-http LAN address) the asynchronous clipboard is missing: copy a selection then. */
export async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    // refused (no permission): try the old way
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "visually-hidden";
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}
