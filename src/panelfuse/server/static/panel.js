// The panel settings: preset or custom members (1–8, with weights), judge, mode, web tools, background,
// compare model; builds the request's `model` + fusion plugin, and shows the worst-case estimate.

import { ApiError, AuthError, postJSON } from "./api.js";
import { fmtCost, h } from "./dom.js";

const LETTERS = "ABCDEFGH";
const MAX_MEMBERS = 8;
const PRESET_PREFIX = "panelfuse/fusion-";
const $ = (id) => document.getElementById(id);

export class PanelSettings {
  constructor({ onAuthError }) {
    this.onAuthError = onAuthError;
    this.list = $("member-list");
    this.estimateSeq = 0;
    $("preset").addEventListener("change", () => this.changed());
    $("add-member").addEventListener("click", () => {
      const input = this.addMember("");
      input.focus();
      this.changed();
    });
    for (const id of ["judge", "mode", "web-tools", "background", "compare", "prompt"]) {
      $(id).addEventListener("input", () => this.changed());
    }
    this.list.addEventListener("input", () => this.changed());
    this.addMember("");
    this.addMember("");
    this.changed();
  }

  // Presets and plain models from GET /v1/models: fusion aliases are not panel members.
  setModels(models) {
    const ids = models.map((m) => m.id);
    const select = $("preset");
    const custom = select.querySelector('option[value="custom"]');
    select.querySelectorAll("option[data-preset]").forEach((o) => o.remove());
    for (const id of ids.filter((i) => i.startsWith(PRESET_PREFIX))) {
      const name = id.slice(PRESET_PREFIX.length);
      select.insertBefore(h("option", { value: name, "data-preset": "", text: name }), custom);
    }
    const plain = ids.filter((i) => !i.startsWith("panelfuse/") && i !== "openrouter/fusion");
    $("model-options").replaceChildren(...plain.map((id) => h("option", { value: id })));
    this.changed();
  }

  addMember(model, weight = 1) {
    const n = this.list.children.length;
    if (n >= MAX_MEMBERS) return null;
    const input = h("input", { class: "member-model", list: "model-options", autocomplete: "off", value: model,
      placeholder: "model id, e.g. openrouter/google/gemini-3-flash" });
    const w = h("input", { class: "member-weight", type: "number", min: "0.1", step: "0.1", value: weight });
    const remove = h("button", { type: "button", class: "quiet remove-member" });
    const li = h("li", { class: "member-row" },
      h("div", { class: "field" }, h("label", { class: "model-label" }), input),
      h("div", { class: "field weight" }, h("label", { class: "weight-label" }), w), remove);
    remove.addEventListener("click", () => {
      const next = li.nextElementSibling || li.previousElementSibling;
      li.remove();
      this.relabel();
      this.changed();
      (next ? next.querySelector("input") : $("add-member")).focus();
    });
    this.list.append(li);
    this.relabel();
    return input;
  }

  // Labels and ids follow the row order: A, B, … as the gateway will label them.
  relabel() {
    const rows = [...this.list.children];
    rows.forEach((li, i) => {
      const letter = LETTERS[i];
      const [model, weight] = li.querySelectorAll("input");
      model.id = `member-${i + 1}`;
      weight.id = `weight-${i + 1}`;
      li.querySelector(".model-label").setAttribute("for", model.id);
      li.querySelector(".model-label").textContent = `Member ${letter} model`;
      li.querySelector(".weight-label").setAttribute("for", weight.id);
      li.querySelector(".weight-label").textContent = `Weight ${letter}`;
      const remove = li.querySelector(".remove-member");
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove member ${letter}`);
      remove.disabled = rows.length <= 1;
    });
    $("add-member").disabled = rows.length >= MAX_MEMBERS;
  }

  get preset() { return $("preset").value; }
  get compareModel() { return $("compare").value.trim(); }

  // The request's model and fusion plugin; throws Error with a message for the user when incomplete.
  build() {
    // A chat continues a conversation: the panel sees all of it (the API's default is the last turn).
    const plugin = { id: "fusion", panel_sees: "conversation" };
    let model = "panelfuse/fusion";
    if (this.preset === "custom") {
      const rows = [...this.list.children].map((li) => li.querySelectorAll("input"));
      const members = rows.map(([m, w]) => ({ model: m.value.trim(), weight: parseFloat(w.value) }));
      if (!members.length || members.some((m) => !m.model)) throw new Error("Every panel member needs a model id.");
      plugin.analysis_models = members.map((m) => m.model);
      const weights = {};
      members.forEach((m, i) => {
        if (Number.isFinite(m.weight) && m.weight > 0 && m.weight !== 1) weights[LETTERS[i]] = m.weight;
      });
      if (Object.keys(weights).length) plugin.weights = weights;
    } else if (this.preset) {
      model = PRESET_PREFIX + this.preset;
    }
    const judge = $("judge").value.trim();
    if (judge) plugin.model = judge;
    if ($("mode").value) plugin.mode = $("mode").value;
    plugin.tools = $("web-tools").checked ? ["web_search", "web_fetch"] : [];
    if ($("background").checked) plugin.background = true;
    return { model, plugins: [plugin] };
  }

  summary() {
    const p = this.preset;
    const parts = [p === "custom" ? `${this.list.children.length} custom members` : p ? `preset ${p}` : "server default"];
    if ($("mode").value) parts.push($("mode").value);
    if (!$("web-tools").checked) parts.push("no web tools");
    if (this.compareModel) parts.push(`compare with ${this.compareModel}`);
    return parts.join(", ");
  }

  changed() {
    $("members").hidden = this.preset !== "custom";
    $("panel-summary").textContent = this.summary();
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.estimate(), 350);
  }

  setMessages(getMessages) { this.getMessages = getMessages; }

  // POST /v1/fusion/estimate with exactly what Send would post.
  async estimate() {
    const out = $("estimate");
    let body;
    try {
      body = this.build();
    } catch (err) {
      out.textContent = `Worst-case cost: — (${err.message})`;
      return;
    }
    const seq = ++this.estimateSeq;
    const messages = this.getMessages ? this.getMessages($("prompt").value) : [{ role: "user", content: "" }];
    try {
      const est = await postJSON("v1/fusion/estimate", { ...body, messages });
      if (seq !== this.estimateSeq) return;
      const stages = Object.entries(est.by_stage || {}).map(([k, v]) => `${k} ${fmtCost(v)}`).join(", ");
      const unpriced = est.unpriced && est.unpriced.length ? ` · no price for ${est.unpriced.join(", ")}` : "";
      out.textContent = `Worst-case cost: ${fmtCost(est.total)}${stages ? ` (${stages})` : ""}${unpriced}`;
    } catch (err) {
      if (seq !== this.estimateSeq) return;
      if (err instanceof AuthError) {
        out.textContent = "Worst-case cost: — (sign in first)";
        this.onAuthError(err);
      } else {
        out.textContent = `Worst-case cost: — (${err instanceof ApiError ? err.message : "unavailable"})`;
      }
    }
  }

  // Show a stored run's panel in the form, so a reopened conversation continues with the same panel.
  loadFromRequest(request) {
    const plugin = (request.plugins || []).find((p) => p && p.id === "fusion") || {};
    const model = request.model || "";
    if (plugin.analysis_models) {
      $("preset").value = "custom";
      this.list.replaceChildren();
      const weights = plugin.weights || {};
      plugin.analysis_models.forEach((m, i) => {
        const id = typeof m === "string" ? m : m.model;
        this.addMember(id, weights[LETTERS[i]] ?? weights[id] ?? (typeof m === "object" && m.weight) ?? 1);
      });
    } else {
      const preset = model.startsWith(PRESET_PREFIX) ? model.slice(PRESET_PREFIX.length) : "";
      $("preset").value = [...$("preset").options].some((o) => o.value === preset) ? preset : "";
    }
    $("judge").value = plugin.model || "";
    $("mode").value = ["synthesize", "judge-writes", "best-of", "single", "escalate", "vote"].includes(plugin.mode) ? plugin.mode : "";
    $("web-tools").checked = !(Array.isArray(plugin.tools) && plugin.tools.length === 0);
    $("background").checked = Boolean(plugin.background);
    this.changed();
  }
}
