// Syntax highlighting for code blocks: comments, strings, numbers, keywords and literals.
//
// A small tokenizer per language family (Python, JavaScript/TypeScript, JSON, shell, SQL,
// and a C-like default for the rest) that wraps tokens in <span class="tok-…">. Like the
// markdown renderer it only ever makes text nodes: code from the model can never become
// markup. Unknown input is shown as it is; nothing throws.

const words = (text) => new Set(text.split(/\s+/).filter(Boolean));

const C_LIKE_KEYWORDS = words(`
  break case catch class const continue default do else enum extends finally for func go if
  import in interface let match new package private protected public return static struct switch
  this throw try type var void while fn impl mut pub use mod trait where async await yield
  namespace using virtual override final abstract goto sizeof typedef union unsigned signed
  int long short char float double bool boolean string auto extern register volatile`);

const LANGUAGES = {
  python: {
    comments: ["#"],
    strings: ['"""', "'''", '"', "'"],
    prefixes: /^[rRbBuUfF]{1,2}$/,
    keywords: words(`and as assert async await break class continue def del elif else except
      finally for from global if import in is lambda match case nonlocal not or pass raise
      return try while with yield`),
    literals: words("True False None self"),
  },
  javascript: {
    comments: ["//", "/*"],
    strings: ['"', "'", "`"],
    keywords: words(`async await break case catch class const continue debugger default delete
      do else export extends finally for from function if import in instanceof let new of
      return static super switch this throw try typeof var void while with yield interface
      type enum implements declare readonly as satisfies keyof namespace abstract`),
    literals: words("true false null undefined NaN Infinity"),
  },
  json: { comments: [], strings: ['"'], keywords: new Set(), literals: words("true false null") },
  shell: {
    comments: ["#"],
    strings: ['"', "'"],
    keywords: words(`if then else elif fi for while until do done case esac in function select
      return exit export local readonly declare unset set shift source alias cd echo sudo`),
    literals: new Set(),
    variables: true,
  },
  sql: {
    comments: ["--", "/*"],
    strings: ["'", '"'],
    caseless: true,
    keywords: words(`select from where insert into values update set delete create table drop
      alter add index primary key foreign references join left right inner outer on group by
      order having limit offset as and or not null is in exists distinct union all case when
      then else end begin commit rollback returning default unique check constraint`),
    literals: words("true false"),
  },
  clike: {
    comments: ["//", "/*", "#"],
    strings: ['"', "'", "`"],
    keywords: C_LIKE_KEYWORDS,
    literals: words("true false null nil None NULL nullptr self"),
  },
};

const ALIASES = {
  py: "python", python: "python", python3: "python", py3: "python",
  js: "javascript", javascript: "javascript", jsx: "javascript", mjs: "javascript",
  ts: "javascript", typescript: "javascript", tsx: "javascript",
  json: "json", jsonc: "json",
  sh: "shell", bash: "shell", shell: "shell", zsh: "shell", console: "shell", shellsession: "shell",
  sql: "sql", postgresql: "sql", sqlite: "sql",
};

const NUMBER = /^(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|(?:\d[\d_]*\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)[a-zA-Z]*/;
const WORD = /^[A-Za-z_$][\w$]*/;

/** The language a fence's info string names ("" when none), as this highlighter knows it. */
export function languageOf(info) {
  const name = String(info ?? "").toLowerCase();
  if (!name) return null;
  return ALIASES[name] ?? "clike";
}

/** A DocumentFragment of `code`, its tokens in <span class="tok-…">, for `language`. */
export function highlight(code, language) {
  const fragment = document.createDocumentFragment();
  const lang = LANGUAGES[language];
  const text = String(code ?? "");
  if (!lang) {
    fragment.append(document.createTextNode(text));
    return fragment;
  }
  let plain = "";
  const flush = () => {
    if (plain) fragment.append(document.createTextNode(plain));
    plain = "";
  };
  const token = (kind, value) => {
    flush();
    const span = document.createElement("span");
    span.className = `tok-${kind}`;
    span.textContent = value;
    fragment.append(span);
  };
  let i = 0;
  while (i < text.length) {
    const rest = text.slice(i, i + 3);
    const comment = lang.comments.find((start) => text.startsWith(start, i));
    if (comment) {
      const end = comment === "/*" ? text.indexOf("*/", i + 2) : text.indexOf("\n", i);
      const stop = end < 0 ? text.length : comment === "/*" ? end + 2 : end;
      // "#" starts a comment only at a word boundary (not in "a#b" or "$#").
      if (comment !== "#" || i === 0 || /[\s;(]/.test(text[i - 1])) {
        token("comment", text.slice(i, stop));
        i = stop;
        continue;
      }
    }
    const quote = lang.strings.find((q) => rest.startsWith(q));
    if (quote) {
      const stop = stringEnd(text, i, quote);
      token("string", text.slice(i, stop));
      i = stop;
      continue;
    }
    const before = i > 0 ? text[i - 1] : "";
    if (/\d/.test(text[i]) || (text[i] === "." && /\d/.test(text[i + 1] ?? ""))) {
      if (!/[\w$]/.test(before)) {
        const m = NUMBER.exec(text.slice(i));
        token("number", m[0]);
        i += m[0].length;
        continue;
      }
    }
    if (lang.variables && text[i] === "$") {
      const m = /^\$(?:\{[^}\n]*\}|[A-Za-z_]\w*|[0-9#?@*$!-])/.exec(text.slice(i));
      if (m) {
        token("variable", m[0]);
        i += m[0].length;
        continue;
      }
    }
    const m = WORD.exec(text.slice(i));
    if (m && !/[\w$]/.test(before)) {
      const word = m[0];
      const key = lang.caseless ? word.toLowerCase() : word;
      const next = text[i + word.length];
      if (lang.prefixes?.test(word) && lang.strings.some((q) => text.startsWith(q, i + word.length))) {
        const q = lang.strings.find((s) => text.startsWith(s, i + word.length));
        const stop = stringEnd(text, i + word.length, q);
        token("string", text.slice(i, stop));
        i = stop;
        continue;
      }
      if (lang.keywords.has(key)) token("keyword", word);
      else if (lang.literals.has(key)) token("literal", word);
      else if (next === "(") token("function", word);
      else plain += word;
      i += word.length;
      continue;
    }
    plain += text[i];
    i++;
  }
  flush();
  return fragment;
}

/** Where the string starting at `i` with `quote` ends (after its closing quote, or at the end). */
function stringEnd(text, i, quote) {
  const single = quote.length === 1;
  let j = i + quote.length;
  while (j < text.length) {
    if (text[j] === "\\") {
      j += 2;
      continue;
    }
    if (single && text[j] === "\n" && quote !== "`") return j; // an unclosed string ends at the line
    if (text.startsWith(quote, j)) return j + quote.length;
    j++;
  }
  return text.length;
}
