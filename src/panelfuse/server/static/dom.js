// DOM and formatting helpers. Text always goes in as text nodes: nothing here parses HTML.

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

let counter = 0;
export function uid(prefix) {
  counter += 1;
  return `${prefix}-${counter}`;
}

export function fmtCost(cost) {
  if (cost === null || cost === undefined) return "—";
  if (cost === 0) return "$0";
  // Small costs keep three significant digits, without exponent notation.
  const digits = Math.max(2, Math.min(8, 2 - Math.floor(Math.log10(Math.abs(cost)))));
  return `$${Number(cost.toFixed(digits))}`;
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export function fmtTokens(usage) {
  if (!usage) return "—";
  const total = usage.total_tokens ?? (usage.prompt_tokens || 0) + (usage.completion_tokens || 0);
  return `${total} tok`;
}

export function fmtWhen(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleString();
}

const announcer = () => document.getElementById("announcer");

// Milestones for screen readers (the streaming text itself is not announced: too chatty).
export function announce(text) {
  const node = announcer();
  if (!node) return;
  node.textContent = "";
  // A fresh text node after a tick, so repeated messages are read again.
  setTimeout(() => { node.textContent = text; }, 30);
}
