// The key's past runs (the server scopes the list to the key), newest first, paged by cursor.

import { AuthError, getJSON } from "./api.js";
import { fmtCost, fmtWhen, h } from "./dom.js";

const $ = (id) => document.getElementById(id);

export function promptOf(run) {
  const msgs = (run.request && run.request.messages) || [];
  const last = [...msgs].reverse().find((m) => m.role === "user");
  const content = last && last.content;
  const text = typeof content === "string" ? content
    : Array.isArray(content) ? content.map((p) => p.text || "").join(" ") : "";
  return text.trim().replace(/\s+/g, " ") || "(no prompt)";
}

export class History {
  constructor({ onOpen, onError }) {
    this.onOpen = onOpen;
    this.onError = onError;
    this.cursor = null;
    // Outcomes this page saw end: the store may record them a moment after the stream's last chunk.
    this.finished = new Map();
    $("history-refresh").addEventListener("click", () => this.load());
    $("history-more").addEventListener("click", () => this.load(this.cursor));
  }

  async load(before = null) {
    const status = $("history-status");
    status.textContent = "Loading…";
    try {
      const q = new URLSearchParams({ limit: "20" });
      if (before) q.set("before", before);
      const page = await getJSON(`v1/fusion/runs?${q}`);
      if (!before) $("history-list").replaceChildren();
      for (const run of page.data) $("history-list").append(this.item(run));
      this.cursor = page.next_cursor;
      $("history-more").hidden = !page.next_cursor;
      status.textContent = $("history-list").children.length ? "" : "No runs yet.";
    } catch (err) {
      if (err instanceof AuthError && err.stale) return; // sent before sign-in; the load after it counts
      status.textContent = "Could not load the runs.";
      this.onError(err);
    }
  }

  markFinished(runId, outcome) {
    if (runId && outcome) this.finished.set(runId, outcome);
  }

  item(stored) {
    const seen = this.finished.get(stored.id);
    const run = stored.status === "running" && seen ? { ...stored, ...seen } : stored;
    const prompt = promptOf(run);
    const short = prompt.length > 70 ? `${prompt.slice(0, 69)}…` : prompt;
    const status = run.status === "completed" && run.degraded ? "degraded" : run.status;
    const meta = [status, run.mode, fmtCost(run.cost), fmtWhen(run.created_at)].filter(Boolean).join(" · ");
    const button = h("button", { type: "button", class: "history-item", "data-run-id": run.id },
      h("span", { class: "history-prompt", text: short }),
      h("span", { class: `history-meta status-${status}`, text: meta }),
      run.parent_run_id ? h("span", { class: "history-meta", text: "re-synthesis" }) : null);
    button.addEventListener("click", () => this.onOpen(run.id));
    return h("li", {}, button);
  }
}
