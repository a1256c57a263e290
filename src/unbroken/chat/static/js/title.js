// A chat's title from its first message, exactly as the service makes it
// (`unbroken.chat.answers.title_of`): the first line that says something, without markdown
// markers, cut at a word to 60 characters. The page shows it before the server has stored it.

export const TITLE_CHARS = 60;
const MARKUP_START = /^(?:#{1,6}\s+|>\s*|[-*+]\s+|\d{1,9}[.)]\s+)+/;
const LINK = /\[([^\]]*)\]\([^)]*\)/g;
const MARKERS = /`+|\*\*|__|~~/g;

export function titleOf(text) {
  let cleaned = "";
  for (const line of String(text ?? "").split(/\r\n|\r|\n/)) {
    const trimmed = line.trim();
    if (trimmed.startsWith("```") || trimmed.startsWith("~~~")) continue;
    cleaned = trimmed.replace(MARKUP_START, "").replace(LINK, "$1").replace(MARKERS, "");
    cleaned = cleaned.split(/\s+/).filter(Boolean).join(" ");
    if (cleaned) break;
  }
  if (!cleaned) return "New chat";
  if ([...cleaned].length <= TITLE_CHARS) return cleaned;
  let cut = [...cleaned].slice(0, TITLE_CHARS - 1).join("");
  const space = cut.lastIndexOf(" ");
  if (space >= Math.floor(TITLE_CHARS / 2)) cut = cut.slice(0, space);
  return cut.replace(/[ ,.;:-]+$/, "") + "…";
}
