// Talking to the gateway: the key, JSON calls, and SSE read from fetch (EventSource cannot send
// an Authorization header, so streams are read by hand).

const KEY_STORE = "panelfuse.key";

// A 401, with the key the request carried ("" for none): a late 401 for a key that is no longer in
// use (a request sent before sign-in) must not send the user back to sign-in.
export class AuthError extends Error {
  constructor(message, key) {
    super(message);
    this.key = key;
  }

  get stale() {
    return this.key !== getKey();
  }
}

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.error = err;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
}

// Relative to the page, so a gateway mounted under a path prefix still works.
function url(path) {
  return new URL(path, document.baseURI).toString();
}

function headers(key, extra = {}) {
  const h = { ...extra };
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function send(method, path, body, signal) {
  const key = getKey();
  const init = { method, headers: headers(key, { Accept: "application/json" }), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(url(path), init);
  if (res.status === 401) throw new AuthError("this gateway needs a valid panelfuse key", key);
  return res;
}

export async function getJSON(path, signal) {
  const res = await send("GET", path, undefined, signal);
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

export async function postJSON(path, body, signal) {
  const res = await send("POST", path, body, signal);
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// Server-sent events from a fetch response: yields {id, event, data} per block; comments (keep-alives)
// are skipped.
export async function* readSSE(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const msg = parseBlock(block);
        if (msg) yield msg;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseBlock(block) {
  const msg = { id: null, event: "message", data: "" };
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "id") msg.id = value;
    else if (field === "event") msg.event = value;
  }
  if (!data.length) return null;
  msg.data = data.join("\n");
  return msg;
}

// POST /v1/chat/completions with stream: true. Calls onChunk(parsed JSON) for every data line until
// [DONE]; a mid-stream error chunk (OpenRouter's: a top-level `error`, finish_reason "error", nothing
// after it) becomes an ApiError.
export async function streamChat(body, onChunk, signal) {
  const res = await send("POST", "v1/chat/completions", { ...body, stream: true }, signal);
  if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
  const runId = res.headers.get("X-Panelfuse-Run-Id");
  for await (const msg of readSSE(res)) {
    if (msg.data === "[DONE]") return { runId, done: true };
    const chunk = JSON.parse(msg.data);
    if (chunk.error) throw new ApiError(chunk.error.code || 502, chunk);
    onChunk(chunk);
  }
  return { runId, done: false };
}

// GET /v1/fusion/runs/{id}/events?after=SEQ: the stored events, then the live tail until the run ends.
export async function tailEvents(runId, after, onEvent, signal) {
  const path = `v1/fusion/runs/${encodeURIComponent(runId)}/events?after=${after}`;
  const res = await send("GET", path, undefined, signal);
  if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
  for await (const msg of readSSE(res)) onEvent(JSON.parse(msg.data));
}
