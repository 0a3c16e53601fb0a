// A small markdown renderer that builds DOM nodes directly: model text only ever becomes text nodes,
// and the only elements are the ones below, so there is nothing to sanitise after the fact. Links are
// kept only for http(s) and mailto; images become links (no remote loads from an answer).

import { h } from "./dom.js";

export function safeUrl(raw) {
  try {
    const u = new URL(String(raw).trim());
    return ["http:", "https:", "mailto:"].includes(u.protocol) ? u.href : null;
  } catch {
    return null;
  }
}

export function link(href, label) {
  const safe = safeUrl(href);
  if (!safe) return document.createTextNode(label);
  return h("a", { href: safe, rel: "noopener noreferrer nofollow", target: "_blank" },
    label, h("span", { class: "visually-hidden", text: " (opens in a new tab)" }));
}

// The earliest inline construct wins; its inner text is rendered recursively.
const INLINE = [
  { re: /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/, make: (m) => h("code", { text: m[2] }) },
  { re: /!?\[([^\]\n]+)\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"\n]*")?\s*\)/, make: (m) => link(m[2], m[1]) },
  { re: /<((?:https?|mailto):[^\s<>]+)>/, make: (m) => link(m[1], m[1]) },
  { re: /\*\*(?=\S)([\s\S]*?\S)\*\*/, make: (m) => h("strong", {}, inline(m[1])) },
  { re: /__(?=\S)([\s\S]*?\S)__(?!\w)/, make: (m) => h("strong", {}, inline(m[1])) },
  { re: /~~(?=\S)([\s\S]*?\S)~~/, make: (m) => h("del", {}, inline(m[1])) },
  { re: /\*(?=[^\s*])([^*]*?[^\s*])\*/, make: (m) => h("em", {}, inline(m[1])) },
  { re: /(?<!\w)_(?=[^\s_])([^_]*?[^\s_])_(?!\w)/, make: (m) => h("em", {}, inline(m[1])) },
  { re: /https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"*_~]/, make: (m) => link(m[0], m[0]) },
  { re: / {2,}\n|\\\n/, make: () => h("br") },
];

export function inline(text) {
  const out = [];
  let rest = text;
  while (rest) {
    let best = null;
    for (const rule of INLINE) {
      const m = rule.re.exec(rest);
      if (m && (!best || m.index < best.m.index)) best = { m, rule };
    }
    if (!best) {
      out.push(rest);
      break;
    }
    if (best.m.index) out.push(rest.slice(0, best.m.index));
    out.push(best.rule.make(best.m));
    rest = rest.slice(best.m.index + best.m[0].length);
  }
  return out;
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])\s+/;
const TABLE_SEP = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;

function cells(row) {
  return row.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
}

// Renders markdown into a fragment. `level` is the heading level that `#` maps to, so an answer's
// headings sit under the page's own (h4 by default).
export function renderMarkdown(text, level = 4) {
  const frag = document.createDocumentFragment();
  const lines = String(text || "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  const para = [];
  const flush = () => {
    if (para.length) frag.append(h("p", {}, inline(para.join("\n"))));
    para.length = 0;
  };
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) {
      flush();
      i += 1;
    } else if ((m = FENCE.exec(line))) {
      flush();
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(m[1])) body.push(lines[i++]);
      i += 1;
      const code = h("code", { text: body.join("\n") });
      if (m[2]) code.dataset.lang = m[2];
      frag.append(h("pre", { tabindex: 0 }, code));
    } else if ((m = HEADING.exec(line))) {
      flush();
      const n = Math.min(6, level + m[1].length - 1);
      frag.append(h(`h${n}`, { class: "md-heading" }, inline(m[2])));
      i += 1;
    } else if (RULE.test(line)) {
      flush();
      frag.append(h("hr"));
      i += 1;
    } else if (QUOTE.test(line)) {
      flush();
      const body = [];
      while (i < lines.length && QUOTE.test(lines[i])) body.push(lines[i++].replace(QUOTE, ""));
      frag.append(h("blockquote", {}, renderMarkdown(body.join("\n"), level)));
    } else if ((m = ITEM.exec(line))) {
      flush();
      i = list(lines, i, frag, level);
    } else if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1])) {
      flush();
      i = table(lines, i, frag);
    } else {
      para.push(line);
      i += 1;
    }
  }
  flush();
  return frag;
}

function list(lines, i, frag, level) {
  const first = ITEM.exec(lines[i]);
  const ordered = /\d/.test(first[2]);
  const node = h(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) node.setAttribute("start", parseInt(first[2], 10));
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (!m || /\d/.test(m[2]) !== ordered) break;
    const indent = m[0].length;
    const body = [lines[i].slice(indent)];
    i += 1;
    // Continuation: indented lines (nested lists, wrapped text); a blank line followed by an indented one.
    while (i < lines.length) {
      const next = lines[i];
      if (next.trim() && /^\s{2,}/.test(next)) body.push(next.replace(/^\s{1,4}/, ""));
      else if (!next.trim() && i + 1 < lines.length && /^\s{2,}\S/.test(lines[i + 1])) body.push("");
      else break;
      i += 1;
    }
    const inner = renderMarkdown(body.join("\n"), level);
    // A one-paragraph item shows as plain text, not a <p> inside the <li>.
    const only = inner.childNodes.length === 1 && inner.firstChild.nodeName === "P";
    node.append(h("li", {}, only ? [...inner.firstChild.childNodes] : inner));
  }
  frag.append(node);
  return i;
}

function table(lines, i, frag) {
  const head = cells(lines[i]);
  const rows = [];
  i += 2;
  while (i < lines.length && lines[i].includes("|") && lines[i].trim()) rows.push(cells(lines[i++]));
  const t = h("table", {},
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, inline(c))))),
    h("tbody", {}, rows.map((r) => h("tr", {}, head.map((_, k) => h("td", {}, inline(r[k] || "")))))));
  frag.append(h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": "Table" }, t));
  return i;
}

// Citations: OpenAI's {type: "url_citation", url_citation: {url, title}} and the flat variant.
export function renderCitations(annotations) {
  const seen = new Map();
  const local = new Map(); // documents of the local corpus (file: URLs): listed as text, never linked
  for (const a of annotations || []) {
    const c = (a && (a.url_citation || (a.type === "url_citation" ? a : null))) || null;
    const href = c && safeUrl(c.url);
    if (href && !seen.has(href)) seen.set(href, c.title || href);
    else if (c && !href && /^file:/i.test(String(c.url || ""))) {
      let path = String(c.url);
      try { path = decodeURIComponent(new URL(path).pathname); } catch { /* keep the raw text */ }
      if (!local.has(path)) local.set(path, c.title || path);
    }
  }
  if (!seen.size && !local.size) return null;
  const items = [...seen].map(([href, title]) => {
    let host = "";
    try { host = new URL(href).host; } catch { /* mailto */ }
    return h("li", {}, link(href, title), host && title !== href ? h("span", { class: "host", text: ` ${host}` }) : null);
  });
  for (const [path, title] of local) {
    items.push(h("li", {}, h("span", { text: title }), h("span", { class: "host", text: ` ${path}` })));
  }
  return h("div", { class: "sources" }, h("p", { class: "sources-title", text: "Sources" }), h("ol", {}, items));
}
