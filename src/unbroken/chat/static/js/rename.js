// Renaming the open chat: "Rename" swaps the title for a small form; Enter saves, Escape or
// Cancel leaves it as it was, and focus goes back to the button either way.

/**
 * Wire the rename form. `chatId()` is the open chat (null: none); `save(chatId, title)`
 * stores the title and resolves to the chat as the server has it; `saved(chatId, chat)` and
 * `failed(err)` report the outcome.
 */
export function installRename(ui, { chatId, save, saved, failed }) {
  const open = () => {
    if (chatId() === null) return;
    ui.titleInput.value = ui.title.textContent;
    ui.title.hidden = true;
    ui.rename.hidden = true;
    ui.titleForm.hidden = false;
    ui.titleInput.focus();
    ui.titleInput.select();
  };
  const close = () => {
    ui.titleForm.hidden = true;
    ui.title.hidden = false;
    ui.rename.hidden = chatId() === null;
    ui.rename.focus();
  };
  ui.rename.addEventListener("click", open);
  ui.titleCancel.addEventListener("click", close);
  ui.titleForm.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    event.preventDefault();
    event.stopPropagation(); // not the page's Escape (stop the answer)
    close();
  });
  ui.titleForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = chatId();
    const title = ui.titleInput.value.split(/\s+/).filter(Boolean).join(" ");
    if (title && id !== null) {
      try {
        saved(id, await save(id, title));
      } catch (err) {
        failed(err);
      }
    }
    close();
  });
}
