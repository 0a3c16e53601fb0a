// One fusion turn in the transcript: the panel cards, the analysis, the streamed answer, the totals and
// the re-synthesize form; plus the optional "compare with one model" column beside it.

import { renderAnalysis, renderBestOf, renderTotals } from "./analysis.js";
import { announce, fmtCost, fmtMs, fmtTokens, h, uid } from "./dom.js";
import { renderCitations, renderMarkdown } from "./markdown.js";

const LETTERS = "ABCDEFGH";
const STATUS_TEXT = { waiting: "waiting", running: "answering…", ok: "ok", failed: "failed", timeout: "timed out",
  refused: "refused", empty: "empty", cut: "cut (grace)", cancelled: "cancelled" };

// Re-render streamed markdown at most once a frame.
function liveMarkdown(node, level) {
  let text = "";
  let queued = false;
  return {
    get text() { return text; },
    set(value) {
      text = value;
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => {
        queued = false;
        node.replaceChildren(renderMarkdown(text, level));
      });
    },
  };
}

export function userMessage(text) {
  return h("div", { class: "msg user" }, h("p", { class: "who", text: "You" }),
    h("div", { class: "md" }, renderMarkdown(text, 4)));
}

export function assistantMessage(text) {
  return h("div", { class: "msg assistant" }, h("p", { class: "who", text: "Answer" }),
    h("div", { class: "md" }, renderMarkdown(text, 4)));
}

export class FusionTurn {
  constructor({ title, onResynthesize }) {
    this.members = new Map();
    this.onResynthesize = onResynthesize;
    this.status = "running";
    const headId = uid("turn");
    this.badge = h("span", { class: "badge badge-running", text: "running" });
    this.heading = h("h3", { id: headId, class: "turn-title", tabindex: -1 }, title, " ", this.badge);
    this.runInfo = h("p", { class: "run-info hint" });
    this.memberGrid = h("div", { class: "member-grid" });
    this.analysisStatus = h("p", { class: "stage-status hint", text: "Waiting for the panel…" });
    this.analysisBody = h("div", {});
    this.analysis = this.section("Analysis", "analysis", this.analysisStatus, this.analysisBody);
    this.answerBody = h("div", { class: "md answer-text", "aria-busy": "true" });
    this.answerStatus = h("p", { class: "stage-status hint", text: "The answer comes after the analysis." });
    this.citations = h("div", {});
    this.answerLive = liveMarkdown(this.answerBody, 5);
    this.answer = this.section("Answer", "answer", this.answerStatus, this.answerBody, this.citations);
    this.totals = this.section("Totals", "totals", h("p", { class: "hint", text: "When the run ends." }));
    this.actions = h("div", { class: "turn-actions" });
    this.fusionCol = h("div", { class: "fusion-col" },
      this.section("Panel", "panel", this.memberGrid), this.analysis, this.answer, this.totals, this.actions);
    this.body = h("div", { class: "turn-body" }, this.fusionCol);
    this.root = h("article", { class: "turn", "aria-labelledby": headId }, this.heading, this.runInfo, this.body);
  }

  // Unnamed sections (not landmarks): the headings are the way around a turn.
  section(title, cls, ...children) {
    return h("section", { class: `stage ${cls}` }, h("h4", { text: title }), ...children);
  }

  // The analysis names members by model id (or label): show "A · model" when that is unambiguous.
  who = (labelOrModel) => {
    const m = this.members.get(labelOrModel);
    if (m) return `${labelOrModel} · ${m.model}`;
    const labels = [...this.members].filter(([, v]) => v.model === labelOrModel).map(([k]) => k);
    return labels.length === 1 ? `${labels[0]} · ${labelOrModel}` : String(labelOrModel ?? "?");
  };

  setBadge(status, text) {
    this.status = status;
    this.badge.className = `badge badge-${status}`;
    this.badge.textContent = text || status;
  }

  setRunInfo(runId, spec) {
    const bits = [runId && `run ${runId}`, spec && spec.preset && `preset ${spec.preset}`, spec && spec.mode];
    this.runId = runId || this.runId;
    this.runInfo.textContent = bits.filter(Boolean).join(" · ");
  }

  member(label, model) {
    let m = this.members.get(label);
    if (!m) {
      m = { model, status: h("span", { class: "badge badge-waiting", text: STATUS_TEXT.waiting }),
        meta: h("span", { class: "meta" }), notes: h("ul", { class: "notes" }),
        body: h("div", { class: "md member-text" }), error: h("p", { class: "error", hidden: true }), text: "" };
      m.title = h("h5", { text: `${label} · ${model}` });
      m.root = h("section", { class: "member", "data-member": label },
        m.title, h("p", { class: "member-status" }, m.status, " ", m.meta), m.notes, m.error, m.body);
      this.members.set(label, m);
      this.memberGrid.append(m.root);
    } else if (model && model !== m.model) {
      m.model = model;
      m.title.textContent = `${label} · ${model}`;
    }
    return m;
  }

  setMemberStatus(m, status) {
    m.status.className = `badge badge-${status}`;
    m.status.textContent = STATUS_TEXT[status] || status;
  }

  showMember(m, data) {
    if (data.content !== undefined) m.body.replaceChildren(renderMarkdown(data.content, 6));
    m.meta.textContent = [fmtMs(data.latency_ms), fmtTokens(data.usage), fmtCost(data.cost)].join(" · ");
  }

  note(m, text) {
    m.notes.append(h("li", { text }));
  }

  restartText(m) {
    m.text = "";
    m.body.textContent = "";
  }

  // One progress event (from a stream chunk's `fusion` field or the events endpoint).
  handleEvent(ev) {
    const type = ev.event || ev.type;
    this.lastSeq = Math.max(this.lastSeq || 0, ev.seq || 0);
    if (ev.run_id) this.runId = ev.run_id;
    switch (type) {
      case "run.started":
        this.setRunInfo(ev.run_id, ev.spec);
        (ev.spec && ev.spec.members || []).forEach((s, i) => this.member(LETTERS[i], s.model));
        break;
      case "panel.started":
        this.setMemberStatus(this.member(ev.member, ev.model), "running");
        break;
      case "panel.delta": {
        const m = this.member(ev.member);
        m.text += ev.text || "";
        m.body.textContent = m.text;
        break;
      }
      case "tool.called":
        if (ev.member === "judge") this.analysisStatus.textContent = `The judge called ${ev.tool}.`;
        else this.note(this.member(ev.member), `${ev.tool} ${JSON.stringify(ev.args || {})}`);
        break;
      case "panel.fallback": {
        const m = this.member(ev.member);
        this.note(m, `fell back from ${ev.from} to ${ev.to}: ${ev.reason || ""}`);
        this.restartText(m); // the next model's text replaces what the failed call streamed
        break;
      }
      case "panel.hedged":
        this.note(this.member(ev.member), `no answer from ${ev.from} after ${fmtMs(ev.after_ms)}: also asked ${ev.to}`);
        break;
      case "panel.hedge_won": {
        const m = this.member(ev.member, ev.to);
        this.note(m, `${ev.to} answered first; ${ev.from} was cancelled`);
        this.restartText(m); // the duplicate's whole text follows
        break;
      }
      case "panel.completed": {
        const m = this.member(ev.member, ev.model);
        this.setMemberStatus(m, "ok");
        this.showMember(m, { ...ev, content: ev.content ?? m.text });
        announce(`Panel member ${ev.member} answered.`);
        break;
      }
      case "panel.failed": {
        const m = this.member(ev.member, ev.model);
        this.setMemberStatus(m, ev.status || "failed");
        m.error.hidden = false;
        m.error.textContent = ev.error || "failed";
        announce(`Panel member ${ev.member} ${ev.status || "failed"}.`);
        break;
      }
      case "panel.cut":
        this.setMemberStatus(this.member(ev.member, ev.model), "cut");
        break;
      case "analysis.started":
        this.analysisStatus.textContent = `The judge (${ev.model}) is reading the answers…`;
        this.analysis.setAttribute("aria-busy", "true");
        break;
      case "analysis.fallback":
        this.analysisStatus.textContent = `Judge fell back from ${ev.from} to ${ev.to}: ${ev.reason || ""}`;
        break;
      case "analysis.completed":
        this.showAnalysis(ev.analysis);
        announce("The analysis is ready.");
        break;
      case "analysis.failed":
        this.analysis.removeAttribute("aria-busy");
        this.analysisStatus.textContent = `The analysis failed: ${ev.error || "unknown error"}`;
        break;
      case "escalation.decided":
        this.analysis.removeAttribute("aria-busy");
        this.analysisStatus.textContent = ev.escalated
          ? `Escalated to the full panel: ${ev.reason}`
          : `Not escalated (the first member's answer stands): ${ev.reason}`;
        break;
      case "vote.tallied":
        this.analysis.removeAttribute("aria-busy");
        this.analysisStatus.textContent = `Vote: ${(ev.groups || [])
          .map((g) => `${g.answer || "?"} (${g.votes})`)
          .join(", ")}; the answer is ${ev.winner}'s${ev.tie ? " (a tie, broken by panel order)" : ""}.`;
        break;
      case "final.delta":
        this.appendFinal(ev.text || "");
        break;
      case "final.completed":
        this.showFinal(ev.content, ev.annotations);
        break;
      case "run.completed":
        this.setBadge(ev.degraded ? "degraded" : "completed", ev.degraded ? "completed, degraded" : "completed");
        break;
      case "run.failed":
        this.outcome = { status: "failed" };
        this.fail(ev.error || "the fusion failed");
        break;
      case "run.cancelled":
        this.outcome = { status: "cancelled" };
        this.fail(ev.reason || "cancelled", "cancelled");
        break;
      default:
        break;
    }
  }

  showAnalysis(analysis) {
    this.analysis.removeAttribute("aria-busy");
    if (!analysis) return;
    this.analysisStatus.textContent = "";
    this.analysisStatus.hidden = true;
    this.analysisBody.replaceChildren(renderAnalysis(analysis, this.who));
  }

  appendFinal(text) {
    if (!this.answerLive.text) this.answerStatus.textContent = "Writing…";
    this.answerLive.set(this.answerLive.text + text);
  }

  showFinal(content, annotations) {
    this.answerBody.setAttribute("aria-busy", "false");
    this.answerStatus.hidden = true;
    this.answerLive.set(content ?? this.answerLive.text);
    this.citations.replaceChildren(renderCitations(annotations) || "");
    announce("The answer is complete.");
  }

  fail(message, status = "failed") {
    this.setBadge(status);
    this.answerBody.setAttribute("aria-busy", "false");
    this.analysis.removeAttribute("aria-busy");
    this.answerStatus.hidden = false;
    this.answerStatus.className = "error";
    this.answerStatus.textContent = message;
    for (const m of this.members.values()) {
      if (["waiting", "answering…"].includes(m.status.textContent)) this.setMemberStatus(m, "cancelled");
    }
    announce(`The run ${status}: ${message}`);
  }

  // The whole result (stream's last chunk, a stored run, or a re-synthesis): render everything from it.
  complete(result) {
    this.setRunInfo(result.run_id, result);
    this.outcome = { status: result.status, degraded: Boolean(result.degraded),
      cost: result.usage ? result.usage.cost : null };
    for (const p of result.panel || []) {
      const m = this.member(p.member, p.model);
      this.setMemberStatus(m, p.status);
      this.showMember(m, p);
      if (p.error) {
        m.error.hidden = false;
        m.error.textContent = p.error;
      }
    }
    if (result.analysis) this.showAnalysis(result.analysis);
    else if (result.best_of) {
      this.analysisStatus.hidden = true;
      this.analysisBody.replaceChildren(renderBestOf(result.best_of, this.who));
    } else if (this.analysisStatus.textContent.startsWith("Waiting")) {
      this.analysisStatus.textContent = result.mode === "single" ? "No analysis in single mode." : "No analysis.";
    }
    if (result.status === "completed") {
      this.showFinal(result.content, result.annotations);
      this.setBadge(result.degraded ? "degraded" : "completed", result.degraded ? "completed, degraded" : "completed");
    } else {
      this.fail(result.error || result.status, result.status || "failed");
    }
    if (result.usage) this.totals.replaceChildren(this.totals.firstChild, renderTotals(result));
    if (result.status === "completed" && (result.panel || []).some((p) => p.status === "ok") && this.onResynthesize) {
      this.actions.replaceChildren(this.resynthForm(result.run_id));
    }
  }

  resynthForm(runId) {
    const judgeId = uid("rs-judge");
    const modeId = uid("rs-mode");
    const judge = h("input", { id: judgeId, list: "model-options", autocomplete: "off", placeholder: "same judge" });
    const mode = h("select", { id: modeId }, ["synthesize", "judge-writes", "best-of"].map((v) =>
      h("option", { value: v, text: v })));
    const button = h("button", { type: "submit", text: "Re-synthesize" });
    const form = h("form", { class: "resynth" },
      h("fieldset", {}, h("legend", { text: "Re-synthesize this run's panel answers" }),
        h("div", { class: "field" }, h("label", { for: judgeId, text: "Judge model" }), judge),
        h("div", { class: "field" }, h("label", { for: modeId, text: "Mode" }), mode), button));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.onResynthesize({ runId, model: judge.value.trim() || null, mode: mode.value, button });
    });
    return form;
  }

  addCompare(model) {
    const col = new CompareColumn(model);
    this.body.classList.add("with-compare");
    this.body.append(col.root);
    return col;
  }
}

export class CompareColumn {
  constructor(model) {
    this.status = h("span", { class: "badge badge-running", text: "answering…" });
    this.meta = h("span", { class: "meta" });
    this.text = h("div", { class: "md compare-text", "aria-busy": "true" });
    this.error = h("p", { class: "error", hidden: true });
    this.live = liveMarkdown(this.text, 5);
    this.root = h("section", { class: "compare-col" }, h("h4", { text: `Compare: ${model}` }), h("p", { class: "member-status" }, this.status, " ", this.meta),
      this.error, this.text);
  }

  append(text) { this.live.set(this.live.text + text); }

  finish({ usage, latencyMs }) {
    this.text.setAttribute("aria-busy", "false");
    this.status.className = "badge badge-ok";
    this.status.textContent = "ok";
    this.meta.textContent = [fmtMs(latencyMs), fmtTokens(usage), fmtCost(usage && usage.cost)].join(" · ");
    announce("The comparison answer is complete.");
  }

  fail(message) {
    this.text.setAttribute("aria-busy", "false");
    this.status.className = "badge badge-failed";
    this.status.textContent = "failed";
    this.error.hidden = false;
    this.error.textContent = message;
  }
}
