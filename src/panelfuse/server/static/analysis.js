// The judge's analysis as readable sections, and the totals (cost by stage and member, latency, tokens).

import { fmtCost, fmtMs, h } from "./dom.js";

const SECTIONS = [
  ["consensus", "Consensus"],
  ["contradictions", "Contradictions"],
  ["partial_coverage", "Partial coverage"],
  ["unique_insights", "Unique insights"],
  ["blind_spots", "Blind spots"],
  ["anomalies", "Anomalies"],
];

// `who` turns a label (or model id) into "A · model" using the run's members. The gateway keeps each
// label beside its model id (`member`, `members`), which stays unambiguous when a model sits twice.
function itemFor(key, item, who) {
  if (typeof item === "string") return h("li", { text: item });
  if (!item || typeof item !== "object") return h("li", { text: String(item) });
  switch (key) {
    case "contradictions":
      return h("li", {},
        h("span", { class: "topic", text: item.topic || "(no topic)" }),
        h("ul", { class: "stances" }, (item.stances || []).map((s) =>
          h("li", {}, h("span", { class: "who", text: `${who(s.member || s.model)}: ` }), s.stance || ""))));
    case "partial_coverage":
      return h("li", {}, item.point || "", h("span", { class: "who",
        text: ` — covered by ${(item.members || item.models || []).map(who).join(", ") || "?"}` }));
    case "unique_insights":
      return h("li", {}, h("span", { class: "who", text: `${who(item.member || item.model)}: ` }), item.insight || "");
    case "anomalies":
      return h("li", {}, h("span", { class: "who", text: `${who(item.member || item.model)}: ` }), item.reason || "");
    default:
      return h("li", { text: JSON.stringify(item) });
  }
}

export function renderAnalysis(analysis, who) {
  const wrap = h("div", { class: "analysis-body" });
  const keys = [...SECTIONS, ...Object.keys(analysis)
    .filter((k) => !SECTIONS.some(([s]) => s === k))
    .map((k) => [k, k.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase())])];
  for (const [key, title] of keys) {
    const items = analysis[key];
    if (items === undefined) continue;
    const list = Array.isArray(items) ? items : [items];
    wrap.append(h("section", { class: `an-section an-${key.replace(/_/g, "-")}` }, h("h5", { text: title }),
      list.length ? h("ul", {}, list.map((it) => itemFor(key, it, who))) : h("p", { class: "hint", text: "None." })));
  }
  return wrap;
}

export function renderBestOf(best, who) {
  return h("div", { class: "analysis-body best-of" },
    h("p", {}, h("strong", { text: "Best answer: " }), who(best.member || best.model),
      best.reason ? ` — ${best.reason}` : ""));
}

// Totals from a finished run: the fusion result shape (usage with cost_details, panel, judge, synthesizer).
export function renderTotals(result) {
  const usage = result.usage || {};
  const details = usage.cost_details || {};
  const estimated = details.estimated ? " (partly estimated)" : "";
  const dl = h("dl", { class: "totals-list" },
    h("div", {}, h("dt", { text: "Cost" }), h("dd", { class: "total-cost", text: fmtCost(usage.cost) + estimated })),
    h("div", {}, h("dt", { text: "Latency" }), h("dd", { text: fmtMs(result.latency_ms) })),
    h("div", {}, h("dt", { text: "Tokens" }), h("dd", {
      text: `${usage.total_tokens ?? 0} (${usage.prompt_tokens ?? 0} in, ${usage.completion_tokens ?? 0} out)` })),
    result.estimate !== null && result.estimate !== undefined
      ? h("div", {}, h("dt", { text: "Worst-case estimate" }), h("dd", { text: fmtCost(result.estimate) }))
      : null);
  const rows = [];
  for (const m of result.panel || []) {
    const cost = details.panel && m.member in details.panel ? details.panel[m.member] : m.cost;
    rows.push(["Panel", `${m.member} · ${m.model}`, m.usage, m.latency_ms, cost]);
  }
  if (result.judge) rows.push(["Analysis", `judge · ${result.judge.model}`, result.judge.usage,
    result.judge.latency_ms, details.analysis ?? result.judge.cost]);
  if (result.synthesizer) rows.push(["Synthesis", `synthesizer · ${result.synthesizer.model}`,
    result.synthesizer.usage, result.synthesizer.latency_ms, details.synthesis ?? result.synthesizer.cost]);
  const table = h("table", { class: "breakdown" },
    h("caption", { text: "Cost by stage and member" }),
    h("thead", {}, h("tr", {}, ["Stage", "Who", "Tokens", "Latency", "Cost"].map((c) =>
      h("th", { scope: "col", text: c })))),
    h("tbody", {}, rows.map(([stage, whoText, u, ms, cost]) => h("tr", {},
      h("th", { scope: "row", text: stage }), h("td", { text: whoText }),
      h("td", { text: u ? String(u.total_tokens ?? 0) : "—" }), h("td", { text: fmtMs(ms) }),
      h("td", { text: fmtCost(cost) })))));
  return h("div", { class: "totals-body" }, dl,
    h("details", { class: "breakdown-details" }, h("summary", { text: "Cost breakdown" }),
      h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": "Cost breakdown" }, table)));
}
