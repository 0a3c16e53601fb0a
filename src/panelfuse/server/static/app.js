// The chatroom: wires the composer, the transcript, history and sign-in to the gateway's own API.

import { ApiError, AuthError, getJSON, getKey, postJSON, setKey, streamChat, tailEvents } from "./api.js";
import { announce } from "./dom.js";
import { Experiments } from "./experiments.js";
import { History } from "./history.js";
import { PanelSettings } from "./panel.js";
import { assistantMessage, FusionTurn, userMessage } from "./turn.js";

const $ = (id) => document.getElementById(id);
let conversation = []; // finished turns as {role, content}: what the next request carries
let running = null; // the AbortController of the send in flight
let lastRunId = null; // the run whose answer ends `conversation`

function errorText(err) {
  if (err instanceof ApiError || err instanceof AuthError) return err.message;
  return `Could not reach the gateway (${err && err.message ? err.message : err}).`;
}

// --- sign-in ----------------------------------------------------------------------------------------

function showSignin(reason) {
  const wasHidden = $("signin").hidden;
  $("signin").hidden = false;
  $("signin-why").textContent = reason || "This gateway needs a panelfuse key.";
  if (wasHidden) $("key").focus(); // once: a failing estimate must not keep stealing focus
}

function onAuthError(err) {
  if (err instanceof AuthError && !err.stale) showSignin(getKey() ? "That key was not accepted. Try another." : null);
}

function updateKeyButton() {
  $("key-button").textContent = getKey() ? "Sign out" : "Sign in";
}

function setupSignin() {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setKey($("key").value.trim());
    $("key").value = "";
    $("signin").hidden = true;
    updateKeyButton();
    announce("Signed in.");
    start();
    $("prompt").focus();
  });
  $("signin-cancel").addEventListener("click", () => { $("signin").hidden = true; $("key-button").focus(); });
  $("key-button").addEventListener("click", () => {
    if (getKey()) {
      setKey("");
      updateKeyButton();
      announce("Signed out.");
    } else {
      showSignin("Enter your panelfuse key.");
    }
  });
  updateKeyButton();
}

// --- sending ----------------------------------------------------------------------------------------

function messagesWith(prompt) {
  return [...conversation, { role: "user", content: prompt }];
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  $("composer").setAttribute("aria-busy", busy ? "true" : "false");
}

function showComposerError(text) {
  $("composer-error").hidden = !text;
  $("composer-error").textContent = text || "";
}

function addToTranscript(...nodes) {
  $("empty-note").hidden = true;
  $("transcript").append(...nodes);
}

async function send() {
  const prompt = $("prompt").value.trim();
  if (running) return;
  if (!prompt) {
    showComposerError("Write a message first.");
    $("prompt").focus();
    return;
  }
  let body;
  try {
    body = panel.build();
  } catch (err) {
    showComposerError(err.message);
    return;
  }
  showComposerError("");
  const messages = messagesWith(prompt);
  const turn = new FusionTurn({ title: "Fusion", onResynthesize: resynthesize });
  addToTranscript(userMessage(prompt), turn.root);
  $("prompt").value = "";
  running = new AbortController();
  setBusy(true);
  const compareModel = panel.compareModel;
  const compare = compareModel ? runCompare(turn.addCompare(compareModel), compareModel, messages, running.signal) : null;
  const ok = await runFusion(turn, { ...body, messages }, running.signal);
  if (compare) await compare;
  if (ok) {
    conversation = [...messages, { role: "assistant", content: turn.answerLive.text }];
    lastRunId = turn.runId;
  } else {
    $("prompt").value = $("prompt").value || prompt; // let the user retry the same message
  }
  pastRuns.markFinished(turn.runId, turn.outcome);
  running = null;
  setBusy(false);
  panel.changed(); // the estimate now covers the longer conversation
  pastRuns.load();
}

// Streams one fusion into `turn`. A dropped connection on a background run resumes from the last seq.
async function runFusion(turn, body, signal) {
  let finished = null;
  let runId = null;
  try {
    const out = await streamChat(body, (chunk) => {
      // Progress rides in `fusion` (chunks with an empty delta; merged deltas carry their last seq);
      // the last chunk has the finish_reason, usage and the whole result in `fusion`.
      const fusion = chunk.fusion;
      if (fusion && fusion.event) turn.handleEvent(fusion);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) turn.appendFinal(delta.content);
      if (chunk.usage && fusion && !fusion.event) {
        finished = { ...fusion, usage: chunk.usage, content: turn.answerLive.text,
          annotations: fusion.annotations || [] };
      }
    }, signal);
    runId = out.runId;
  } catch (err) {
    if (signal.aborted) {
      turn.fail(body.plugins[0].background ? "Stopped watching; the run continues in the background."
        : "Stopped.", "cancelled");
      return false;
    }
    if (!(err instanceof TypeError) || !turn.runId) {
      turn.fail(errorText(err));
      onAuthError(err);
      return false;
    }
  }
  if (finished) {
    turn.complete(finished);
    return finished.status === "completed";
  }
  // The stream ended early: follow the run through the events endpoint, from the last seq seen.
  return followRun(turn, runId || turn.runId, turn.lastSeq || 0, signal);
}

async function followRun(turn, runId, after, signal) {
  try {
    await tailEvents(runId, after, (ev) => turn.handleEvent(ev), signal);
    const run = await getJSON(`v1/fusion/runs/${encodeURIComponent(runId)}`, signal);
    return showStoredRun(turn, run);
  } catch (err) {
    if (!signal || !signal.aborted) turn.fail(errorText(err));
    onAuthError(err);
    return false;
  }
}

async function runCompare(col, model, messages, signal) {
  const started = performance.now();
  let usage = null;
  try {
    await streamChat({ model, messages, stream_options: { include_usage: true } }, (chunk) => {
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) col.append(delta.content);
      if (chunk.usage) usage = chunk.usage;
    }, signal);
    col.finish({ usage, latencyMs: performance.now() - started });
  } catch (err) {
    col.fail(signal.aborted ? "Stopped." : errorText(err));
  }
}

// --- stored runs: reopen and re-synthesize ------------------------------------------------------------

function cleanMessages(msgs) {
  return (msgs || []).filter((m) => ["system", "developer", "user", "assistant"].includes(m.role))
    .map((m) => ({ role: m.role, content: m.content ?? "" }));
}

function showStoredRun(turn, run) {
  const result = run.result || { status: run.status, error: run.error, run_id: run.id };
  turn.complete({ ...result, status: run.status === "completed" ? "completed" : run.status,
    error: result.error || run.error });
  return run.status === "completed";
}

async function reopen(runId) {
  if (running) running.abort();
  let run;
  try {
    run = await getJSON(`v1/fusion/runs/${encodeURIComponent(runId)}`);
  } catch (err) {
    showComposerError(errorText(err));
    onAuthError(err);
    return;
  }
  const msgs = cleanMessages(run.request && run.request.messages);
  const lastUser = msgs.map((m) => m.role).lastIndexOf("user");
  $("transcript").replaceChildren();
  for (const m of msgs.slice(0, lastUser)) {
    if (m.role === "user") addToTranscript(userMessage(String(m.content)));
    else if (m.role === "assistant") addToTranscript(assistantMessage(String(m.content)));
  }
  const title = run.parent_run_id ? `Re-synthesis of ${run.parent_run_id}` : "Fusion";
  const turn = new FusionTurn({ title, onResynthesize: resynthesize });
  addToTranscript(userMessage(String(msgs[lastUser] ? msgs[lastUser].content : "")), turn.root);
  if (run.request) panel.loadFromRequest(run.request);
  conversation = msgs;
  turn.heading.focus();
  let ok;
  if (run.status === "running") {
    turn.setRunInfo(run.id, run);
    running = new AbortController();
    setBusy(true);
    ok = await followRun(turn, run.id, 0, running.signal);
    running = null;
    setBusy(false);
    pastRuns.markFinished(run.id, turn.outcome);
    pastRuns.load();
  } else {
    ok = showStoredRun(turn, run);
  }
  conversation = ok ? [...msgs, { role: "assistant", content: turn.answerLive.text }] : msgs.slice(0, lastUser);
  lastRunId = ok ? run.id : null;
  panel.changed();
  announce(`Reopened run ${run.id}.`);
}

async function resynthesize({ runId, model, mode, button }) {
  button.disabled = true;
  button.textContent = "Re-synthesizing…";
  const turn = new FusionTurn({ title: `Re-synthesis of ${runId}`, onResynthesize: resynthesize });
  addToTranscript(turn.root);
  turn.analysisStatus.textContent = "The judge is reading the stored panel answers…";
  try {
    const data = await postJSON(`v1/fusion/runs/${encodeURIComponent(runId)}/resynthesize`,
      { ...(model ? { model } : {}), mode });
    const message = data.choices[0].message;
    turn.complete({ ...data.fusion, usage: data.usage, content: message.content, status: "completed",
      annotations: message.annotations || data.fusion.annotations || [] });
    // Re-synthesizing the latest turn changes what the conversation continues from.
    const last = conversation[conversation.length - 1];
    if (runId === lastRunId && last && last.role === "assistant") {
      last.content = message.content;
      lastRunId = data.fusion.run_id;
    }
    turn.heading.focus();
  } catch (err) {
    turn.fail(errorText(err));
    onAuthError(err);
  } finally {
    button.disabled = false;
    button.textContent = "Re-synthesize";
    pastRuns.load();
  }
}

function newConversation() {
  if (running) running.abort();
  conversation = [];
  lastRunId = null;
  $("transcript").replaceChildren();
  $("empty-note").hidden = false;
  showComposerError("");
  $("prompt").focus();
  panel.changed();
}

// --- start --------------------------------------------------------------------------------------------

const panel = new PanelSettings({ onAuthError });
const pastRuns = new History({ onOpen: reopen, onError: onAuthError });
new Experiments({ onError: onAuthError }); // the Experiments view (admin): list and reports
panel.setMessages(messagesWith);

async function start() {
  try {
    const models = await getJSON("v1/models");
    panel.setModels(models.data || []);
  } catch (err) {
    onAuthError(err);
    if (!(err instanceof AuthError)) showComposerError(`Could not list the models: ${errorText(err)}`);
  }
  pastRuns.load();
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => running && running.abort());
$("new-chat").addEventListener("click", newConversation);
setupSignin();
start();
document.body.dataset.ready = "true";
