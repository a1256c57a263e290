// Light, safe formatting for model output: paragraphs, headings, lists, block quotes,
// tables, fenced code (highlighted), inline code, bold, italic and http(s) links.
//
// Safety: the output is built from DOM nodes whose text is only ever set with
// `textContent` / text nodes; no string is parsed as HTML, so nothing the model (or anyone)
// writes can inject markup or script. Links are kept only for http:, https: and mailto:.
// The renderer is total: any input renders (an unclosed fence while streaming is a code
// block that runs to the end; unmatched markers stay literal text).

import { highlight, languageOf } from "./highlight.js";

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:\s+(.*)|$)/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
const TABLE_DELIMITER = /^ {0,3}\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$/;

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

/** A DocumentFragment with `text` formatted (see the module comment). */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  renderBlocks(String(text ?? "").replace(/\r\n?/g, "\n").split("\n"), fragment);
  return fragment;
}

/** A DocumentFragment with `text` as plain text, line breaks kept (user messages). */
export function renderPlain(text) {
  const fragment = document.createDocumentFragment();
  const p = el("p", "plain");
  p.textContent = String(text ?? "");
  fragment.append(p);
  return fragment;
}

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || QUOTE.test(line) || RULE.test(line) || startsItem(line);
}

function startsItem(line) {
  const m = ITEM.exec(line);
  return m !== null && m[1].length <= 3;
}

function renderBlocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.trim() === "") {
      i++;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const body = [];
      i++;
      while (i < lines.length) {
        const close = lines[i].trim();
        if (close.startsWith(marker[0].repeat(marker.length)) && /^[`~]+$/.test(close)) {
          i++;
          break;
        }
        body.push(lines[i]);
        i++;
      }
      const pre = el("pre");
      const code = el("code");
      const language = languageOf(fence[2]);
      if (fence[2]) {
        code.dataset.lang = fence[2];
        pre.dataset.lang = fence[2];
        code.className = `language-${fence[2].replace(/[^\w+#.-]/g, "")}`;
      }
      code.append(highlight(body.join("\n"), language));
      pre.append(code);
      parent.append(pre);
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const h = el(`h${Math.min(6, heading[1].length + 2)}`);
      renderInline(heading[2], h);
      parent.append(h);
      i++;
      continue;
    }
    if (RULE.test(line)) {
      parent.append(el("hr"));
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && lines[i].trim() !== "" && QUOTE.test(lines[i])) {
        inner.push(QUOTE.exec(lines[i])[1]);
        i++;
      }
      const quote = el("blockquote");
      renderBlocks(inner, quote);
      parent.append(quote);
      continue;
    }
    if (startsItem(line)) {
      i = renderList(lines, i, parent);
      continue;
    }
    if (startsTable(lines, i)) {
      i = renderTable(lines, i, parent);
      continue;
    }
    const para = [];
    while (
      i < lines.length &&
      lines[i].trim() !== "" &&
      (para.length === 0 || !(isBlockStart(lines[i]) || startsTable(lines, i)))
    ) {
      para.push(lines[i].trim());
      i++;
    }
    const p = el("p");
    para.forEach((text, n) => {
      if (n > 0) p.append(el("br"));
      renderInline(text, p);
    });
    parent.append(p);
  }
}

/** Whether a GitHub-style table starts at line `i`: a row of cells, then a delimiter row. */
function startsTable(lines, i) {
  const header = lines[i];
  const delimiter = lines[i + 1];
  if (delimiter === undefined || !header.includes("|") || !TABLE_DELIMITER.test(delimiter)) return false;
  return cells(header).length === cells(delimiter).length;
}

/** The cells of a table row (outer pipes optional; `\|` is a literal pipe). */
function cells(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  const out = [];
  let cell = "";
  for (let i = 0; i < row.length; i++) {
    if (row[i] === "\\" && row[i + 1] === "|") {
      cell += "|";
      i++;
    } else if (row[i] === "|") {
      out.push(cell.trim());
      cell = "";
    } else {
      cell += row[i];
    }
  }
  out.push(cell.trim());
  return out;
}

function renderTable(lines, i, parent) {
  const head = cells(lines[i]);
  const aligns = cells(lines[i + 1]).map((spec) =>
    spec.startsWith(":") && spec.endsWith(":") ? "center" : spec.endsWith(":") ? "right" : null,
  );
  const wrap = el("div", "table-wrap");
  const table = el("table");
  const row = (values, tag) => {
    const tr = el("tr");
    head.forEach((_, n) => {
      const cell = el(tag, aligns[n] ? `align-${aligns[n]}` : "");
      renderInline(values[n] ?? "", cell);
      tr.append(cell);
    });
    return tr;
  };
  const thead = el("thead");
  thead.append(row(head, "th"));
  const tbody = el("tbody");
  i += 2;
  // As on GitHub: rows go on until a blank line or another block.
  while (i < lines.length && lines[i].trim() !== "" && !isBlockStart(lines[i])) {
    tbody.append(row(cells(lines[i]), "td"));
    i++;
  }
  table.append(thead, tbody);
  wrap.append(table);
  parent.append(wrap);
  return i;
}

function renderList(lines, i, parent) {
  const first = ITEM.exec(lines[i]);
  const ordered = /\d/.test(first[2]);
  const indent = first[1].length;
  const list = el(ordered ? "ol" : "ul");
  if (ordered) {
    const start = parseInt(first[2], 10);
    if (start !== 1) list.start = start;
  }
  let loose = false;
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
    const contentIndent = indent + m[2].length + 1;
    const body = [m[3] ?? ""];
    i++;
    while (i < lines.length) {
      const line = lines[i];
      if (line.trim() === "") {
        // A blank line continues the item only if indented content follows it.
        const nextLine = lines[i + 1];
        if (nextLine !== undefined && leading(nextLine) >= contentIndent && nextLine.trim() !== "") {
          body.push("");
          loose = true;
          i++;
          continue;
        }
        break;
      }
      if (leading(line) >= Math.min(contentIndent, indent + 2)) {
        body.push(line.slice(Math.min(leading(line), contentIndent)));
        i++;
        continue;
      }
      if (ITEM.test(line) || isBlockStart(line)) break;
      body.push(line.trim()); // a lazy continuation line
      i++;
    }
    const li = el("li");
    if (body.length === 1 && !loose) {
      renderInline(body[0], li);
    } else {
      renderBlocks(body, li);
      if (!loose && li.childNodes.length && li.firstChild.nodeName === "P") {
        // Tight item: its first paragraph reads as the item's own text.
        const p = li.firstChild;
        while (p.firstChild) li.insertBefore(p.firstChild, p);
        p.remove();
      }
    }
    list.append(li);
    // Blank lines between items of the same list keep the list going.
    let j = i;
    while (j < lines.length && lines[j].trim() === "") j++;
    if (j > i) {
      const m2 = j < lines.length ? ITEM.exec(lines[j]) : null;
      if (m2 && m2[1].length === indent && /\d/.test(m2[2]) === ordered) {
        i = j;
        continue;
      }
      break;
    }
  }
  parent.append(list);
  return i;
}

function leading(line) {
  return line.length - line.trimStart().length;
}

/** Append the inline formatting of `text` to `parent`. */
export function renderInline(text, parent) {
  let plain = "";
  const flush = () => {
    if (plain) parent.append(document.createTextNode(plain));
    plain = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length && /[!-/:-@[-`{-~]/.test(text[i + 1])) {
      plain += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "`") {
      let run = 1;
      while (text[i + run] === "`") run++;
      const ticks = "`".repeat(run);
      let close = text.indexOf(ticks, i + run);
      while (close >= 0 && text[close + run] === "`") close = text.indexOf(ticks, close + run + 1);
      if (close >= 0) {
        flush();
        const code = el("code");
        let inner = text.slice(i + run, close);
        if (inner.length > 2 && inner.startsWith(" ") && inner.endsWith(" ")) inner = inner.slice(1, -1);
        code.textContent = inner;
        parent.append(code);
        i = close + run;
        continue;
      }
      plain += ticks;
      i += run;
      continue;
    }
    if ((c === "*" || c === "_") && text[i + 1] === c) {
      const marker = c + c;
      const close = text.indexOf(marker, i + 2);
      if (close > i + 2 && text[i + 2] !== " " && text[close - 1] !== " ") {
        flush();
        const strong = el("strong");
        renderInline(text.slice(i + 2, close), strong);
        parent.append(strong);
        i = close + 2;
        continue;
      }
    } else if (c === "*" || c === "_") {
      const close = findEmphasisEnd(text, i, c);
      const wordBefore = i > 0 && /[\p{L}\p{N}]/u.test(text[i - 1]);
      if (close > i + 1 && !(c === "_" && wordBefore)) {
        flush();
        const em = el("em");
        renderInline(text.slice(i + 1, close), em);
        parent.append(em);
        i = close + 1;
        continue;
      }
    } else if (c === "[") {
      const m = /^\[([^\]\n]+)\]\(\s*<?([^\s()<>]+)>?\s*\)/.exec(text.slice(i));
      const href = m && safeHref(m[2]);
      if (href) {
        flush();
        const a = el("a");
        a.href = href;
        a.rel = "noopener noreferrer nofollow";
        a.target = "_blank";
        renderInline(m[1], a);
        parent.append(a);
        i += m[0].length;
        continue;
      }
    }
    plain += c;
    i++;
  }
  flush();
}

function findEmphasisEnd(text, i, marker) {
  if (text[i + 1] === undefined || text[i + 1] === " ") return -1;
  for (let j = i + 1; j < text.length; j++) {
    if (text[j] === "`") return -1; // do not reach across code spans
    if (text[j] === marker && text[j + 1] !== marker && text[j - 1] !== " " && text[j - 1] !== marker) {
      if (marker === "_" && j + 1 < text.length && /[\p{L}\p{N}]/u.test(text[j + 1])) continue;
      return j;
    }
  }
  return -1;
}

function safeHref(raw) {
  try {
    const url = new URL(raw, window.location.href);
    return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}
