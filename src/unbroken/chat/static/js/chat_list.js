// The list of chats in the sidebar: newest first, the open one marked, each with a delete
// button that asks once more ("Delete?") before it deletes.

/**
 * Show `chats` (null: not loaded yet) in `list`, updating the items already there; the
 * chat `current` is marked. `remove(chatId, button)` runs on a confirmed delete.
 */
export function showChats(list, emptyNote, chats, current, remove) {
  emptyNote.hidden = chats === null || chats.length > 0;
  const existing = new Map([...list.children].map((li) => [li.dataset.id, li]));
  (chats ?? []).forEach((chat, index) => {
    let li = existing.get(chat.id);
    if (li) existing.delete(chat.id);
    else li = createItem(chat, remove);
    const link = li.querySelector("a");
    link.textContent = chat.title;
    link.title = chat.title;
    if (chat.id === current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
    li.dataset.active = chat.active ? "true" : "false";
    const del = li.querySelector(".delete");
    del.dataset.title = chat.title;
    if (del.dataset.confirm !== "true") del.setAttribute("aria-label", `Delete chat: ${chat.title}`);
    if (list.children[index] !== li) list.insertBefore(li, list.children[index] ?? null);
  });
  for (const li of existing.values()) li.remove();
}

function createItem(chat, remove) {
  const li = document.createElement("li");
  li.dataset.id = chat.id;
  const link = document.createElement("a");
  link.href = `/chat/${encodeURIComponent(chat.id)}`;
  link.dataset.nav = "";
  const del = document.createElement("button");
  del.type = "button";
  del.className = "delete";
  del.textContent = "✕";
  del.addEventListener("click", () => {
    if (del.dataset.confirm === "true") {
      remove(chat.id, del);
      return;
    }
    // First press: ask. The question goes away by itself after a few seconds.
    del.dataset.confirm = "true";
    del.textContent = "Delete?";
    del.setAttribute("aria-label", `Confirm: delete chat ${del.dataset.title ?? ""}`.trim());
    setTimeout(() => {
      del.dataset.confirm = "false";
      del.textContent = "✕";
      del.setAttribute("aria-label", `Delete chat: ${del.dataset.title ?? ""}`);
    }, 4000);
  });
  li.append(link, del);
  return li;
}
