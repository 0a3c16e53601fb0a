// The Experiments view: the gateway's experiments (GET /v1/experiments, admin) and one experiment's
// report (GET /v1/experiments/{name}/report): per arm, the differences against the control with their
// intervals, and the projected monthly cost. Tables are arms as columns, figures as rows, so a phone
// shows two or three arms without scrolling.

import { ApiError, AuthError, getJSON } from "./api.js";
import { announce, fmtCost, fmtMs, h } from "./dom.js";

const $ = (id) => document.getElementById(id);
const ROLES = { control: "control", primary: "primary", shadow: "shadow", removed: "not in the definition" };
const METRICS = { cost_per_request: "Cost/request", latency_p50_ms: "Latency p50", failure_rate: "Failure rate",
  feedback_mean: "Feedback mean", rubric_score: "Rubric score" };

export function money(x) {
  if (x === null || x === undefined) return "—";
  if (Math.abs(x) < 1) return x < 0 ? `-${fmtCost(-x)}` : fmtCost(x);
  return x.toLocaleString("en-US", { style: "currency", currency: "USD", minimumFractionDigits: 2,
    maximumFractionDigits: 2 });
}

export function pct(x) {
  return x === null || x === undefined ? "—" : `${(x * 100).toFixed(1)}%`;
}

function num(x, digits = 3) {
  return x === null || x === undefined ? "—" : x.toFixed(digits);
}

// A metric's value, or a signed difference of it, in the metric's unit.
export function metricText(metric, x, signed = false) {
  if (x === null || x === undefined) return "—";
  const sign = signed && x > 0 ? "+" : "";
  if (metric === "cost_per_request") return sign + money(x);
  if (metric === "latency_p50_ms") return sign + fmtMs(x);
  if (metric === "failure_rate") return signed ? `${sign}${(x * 100).toFixed(1)} pp` : pct(x);
  return signed ? `${sign}${x.toFixed(3)}` : num(x);
}

function wrapTable(label, table) {
  // Many arms may still be wider than a phone: the table scrolls inside its own focusable region.
  return h("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": label }, table);
}

function armTable(report) {
  const arms = report.arms;
  const rubric = Boolean(report.grader_model);
  const rows = [
    ["Requests", (a) => String(a.requests)],
    ["Cost/request", (a) => money(a.cost_per_request) + (a.unpriced ? ` (${a.unpriced} unpriced)` : "")],
    ["Total cost", (a) => money(a.total_cost)],
    ["Latency p50", (a) => fmtMs(a.latency_p50_ms)],
    ["Latency p95", (a) => fmtMs(a.latency_p95_ms)],
    ["Failure rate", (a) => `${pct(a.failure_rate)} (${a.failed})`],
    ["Cancelled", (a) => `${pct(a.cancelled_rate)} (${a.cancelled})`],
    ["Degraded", (a) => `${pct(a.degraded_rate)} (${a.degraded})`],
    ["Skipped (shadow)", (a) => String(a.skipped)],
    ["Cached", (a) => pct(a.cached_share)],
    ["Feedback", (a) => (a.feedback_count ? `${num(a.feedback_mean, 2)} (n = ${a.feedback_count})` : "none")],
    rubric ? ["Rubric score", (a) => (a.rubric && a.rubric.graded
      ? `${num(a.rubric.mean)} (${a.rubric.graded}/${a.rubric.sample} graded)` : "not graded")] : null,
  ].filter(Boolean);
  return wrapTable("Arms", h("table", { class: "arms-table" },
    h("caption", { text: "Per arm" }),
    h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "Figure" }),
      arms.map((a) => h("th", { scope: "col", "data-arm": a.arm },
        h("span", { class: "arm-name", text: a.arm }), " ",
        h("span", { class: `badge badge-role-${a.role}`, text: ROLES[a.role] || a.role }))))),
    h("tbody", {}, rows.map(([label, cell]) => h("tr", {}, h("th", { scope: "row", text: label }),
      arms.map((a) => h("td", { "data-arm": a.arm, text: cell(a) })))))));
}

function differenceTable(report) {
  if (!report.differences.length) {
    return h("p", { class: "hint", text: "No differences yet: an arm and the control need observations." });
  }
  const level = Math.round(report.confidence * 100);
  return wrapTable("Differences", h("table", { class: "diff-table" },
    h("caption", { text: `Arm − ${report.control}, with ${level}% bootstrap intervals` }),
    h("thead", {}, h("tr", {}, ["Arm and metric", "Difference", `${level}% interval`].map((c) =>
      h("th", { scope: "col", text: c })))),
    h("tbody", {}, report.differences.map((d) => h("tr", { "data-arm": d.arm, "data-metric": d.metric },
      h("th", { scope: "row" }, h("span", { class: "diff-arm", text: d.arm }), " ",
        h("span", { class: "diff-metric", text: METRICS[d.metric] || d.metric })),
      h("td", { class: d.excludes_zero ? "clear" : "" }, metricText(d.metric, d.difference, true),
        d.excludes_zero ? h("span", { class: "visually-hidden", text: " (interval excludes 0)" }) : null),
      h("td", { text: `${metricText(d.metric, d.ci_low, true)} to ${metricText(d.metric, d.ci_high, true)}` }))))));
}

function monthlyTable(report) {
  const vol = report.volume;
  const note = h("p", { class: "volume-note", text: `Volume: ${vol.note} (source: ${vol.source}).` });
  if (vol.monthly_requests === null) return [note];
  return [note, wrapTable("Projected monthly cost", h("table", { class: "monthly-table" },
    h("caption", { text: "Projected monthly cost" }),
    h("thead", {}, h("tr", {}, ["Arm", "Per month", `Against ${report.control}`].map((c) =>
      h("th", { scope: "col", text: c })))),
    h("tbody", {}, report.monthly.map((m) => h("tr", { "data-arm": m.arm },
      h("th", { scope: "row", text: m.arm }),
      h("td", { class: "monthly-cost", text: money(m.monthly_cost) }),
      h("td", { text: m.difference === null ? "—"
        : `${metricText("cost_per_request", m.difference, true)} (${metricText("cost_per_request", m.ci_low, true)}`
          + ` to ${metricText("cost_per_request", m.ci_high, true)})` }))))))];
}

export class Experiments {
  constructor({ onError }) {
    this.onError = onError;
    this.current = null;
    $("experiments-button").addEventListener("click", () => this.open());
    $("experiments-close").addEventListener("click", () => this.close());
    $("experiments-refresh").addEventListener("click", () => this.load());
  }

  open() {
    $("experiments").hidden = false;
    document.querySelector(".layout").hidden = true;
    $("experiments-button").setAttribute("aria-pressed", "true");
    $("experiments-h").focus();
    this.load();
  }

  close() {
    $("experiments").hidden = true;
    document.querySelector(".layout").hidden = false;
    $("experiments-button").setAttribute("aria-pressed", "false");
    $("experiments-button").focus();
  }

  async load() {
    const status = $("experiments-status");
    status.textContent = "Loading…";
    try {
      const list = await getJSON("v1/experiments");
      $("experiments-list").replaceChildren(...list.data.map((e) => this.item(e)));
      status.textContent = list.data.length ? "" : "No experiments yet.";
    } catch (err) {
      status.textContent = this.problem(err, "the experiments");
    }
  }

  problem(err, what) {
    this.onError(err);
    if (err instanceof AuthError) return "Sign in with the admin key to see experiments.";
    if (err instanceof ApiError && err.status === 403) return "Experiments are for the admin key.";
    return `Could not load ${what}: ${err.message}`;
  }

  item(e) {
    const arms = ((e.definition && e.definition.arms) || []).map((a) => a.name).join(", ");
    const meta = [e.status, e.chosen_arm ? `chosen: ${e.chosen_arm}` : null, arms ? `arms: ${arms}` : null]
      .filter(Boolean).join(" · ");
    return h("li", {}, h("button", { type: "button", class: "experiment-item", "data-name": e.name,
      onclick: () => this.show(e.name) },
    h("span", { class: "experiment-name", text: e.name }), h("span", { class: "history-meta", text: meta })));
  }

  async show(name, monthly = null) {
    this.current = name;
    const box = $("experiment-report");
    const q = new URLSearchParams();
    if (monthly) q.set("monthly_requests", String(monthly));
    box.setAttribute("aria-busy", "true");
    try {
      const report = await getJSON(`v1/experiments/${encodeURIComponent(name)}/report?${q}`);
      box.replaceChildren(...this.render(report, monthly).filter(Boolean));
      box.querySelector("h3").focus();
      announce(`Report of ${name} shown.`);
    } catch (err) {
      box.replaceChildren(h("p", { class: "error", role: "alert", text: this.problem(err, "the report") }));
    } finally {
      box.setAttribute("aria-busy", "false");
    }
  }

  render(report, monthly) {
    const state = [report.status || "declared in the config",
      report.chosen_arm ? `chosen arm ${report.chosen_arm}` : null,
      report.paused_arms.length ? `paused: ${report.paused_arms.join(", ")}` : null].filter(Boolean).join(" · ");
    const input = h("input", { id: "monthly-requests", type: "number", min: 1, step: 1, inputmode: "numeric",
      value: monthly || "", placeholder: report.volume.monthly_requests ? String(Math.round(report.volume.monthly_requests))
        : "" });
    const form = h("form", { class: "monthly-form" },
      h("div", { class: "field" }, h("label", { for: "monthly-requests", text: "Your monthly requests" }), input),
      h("button", { type: "submit", text: "Project" }));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const n = Number.parseInt(input.value, 10);
      this.show(report.name, Number.isFinite(n) && n > 0 ? n : null);
    });
    return [
      h("h3", { tabindex: -1, text: `Experiment ${report.name}` }),
      h("p", { class: "hint", text: `${state} · models: ${report.models.join(", ")} · ${report.requests} requests` }),
      armTable(report),
      h("h4", { text: `Differences against ${report.control}` }),
      differenceTable(report),
      report.differences.length ? h("p", { class: "hint", text: "Bold: the interval excludes 0 (a difference "
        + "the data supports). Each arm is resampled on its own; failure rates in percentage points." }) : null,
      h("h4", { text: "Projected monthly cost" }),
      form,
      ...monthlyTable(report),
    ];
  }
}
