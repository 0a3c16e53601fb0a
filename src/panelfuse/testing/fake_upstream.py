"""`FakeUpstream`: a scriptable fake LLM provider (OpenAI + Anthropic wires) on a loopback port.

The server runs in its own thread with its own event loop, so it serves sync tests, async tests on any
loop, and benchmarks alike. Handlers run only on that loop; counters are plain ints mutated there.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, Literal

from aiohttp import web

from panelfuse.testing import wire_anthropic, wire_openai
from panelfuse.testing.scripts import HTTP_FAILURES, Failure, Plan, Script, ScriptLike, build_plan

Wire = Literal["openai", "anthropic"]
_WIRES: dict[str, ModuleType] = {"openai": wire_openai, "anthropic": wire_anthropic}
_ID_PREFIX = {"openai": "call_", "anthropic": "toolu_"}
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
# A response body that is not JSON (INVALID_JSON, or MALFORMED_SSE asked for without streaming).
_BROKEN_JSON = b'{"id": "broken", "choices": [{"message": {"content": "unterminated'


@dataclass
class RecordedRequest:
    path: str
    model: str | None
    body: Any  # parsed JSON, or None when the body was empty / not JSON
    headers: dict[str, str]  # header names lower-cased
    stream: bool
    wire: Wire
    time: float  # time.monotonic() on arrival
    method: str = "POST"
    latency: float = 0.0  # the delay actually applied before the first byte (drawn when lognormal)
    failure: Failure | None = None  # the failure actually applied (after fail_times), if any


class _Tracker:
    """In-flight accounting for one request; `finish` is idempotent so every exit path may call it."""

    __slots__ = ("done", "fake")

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.done = False
        fake._in_flight += 1
        fake._max_in_flight = max(fake._max_in_flight, fake._in_flight)

    def finish(self, disconnected: bool = False) -> None:
        if self.done:
            return
        self.done = True
        self.fake._in_flight -= 1
        if disconnected and not self.fake._stopping:
            self.fake._disconnects += 1


class _Aborted(Exception):
    """We cut the connection on purpose (CUT / RESET); not a client disconnect."""


class FakeUpstream:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, seed: int | None = None) -> None:
        self.default: Script = Script()
        self.models: list[str] = []
        self.requests: list[RecordedRequest] = []
        self._host, self._port = host, port
        self._scripts: dict[str, list[ScriptLike]] = {}
        self._lock = threading.Lock()  # scripts are set from test threads, consumed on the server loop
        self._rng = random.Random(seed)
        self._in_flight = 0
        self._max_in_flight = 0
        self._disconnects = 0
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self._host, self._port))
        self._port = sock.getsockname()[1]
        self._stopping = False
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(sock, ready, errors), name=f"FakeUpstream:{self._port}", daemon=True
        )
        self._thread.start()
        ready.wait(10)
        if errors:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError("FakeUpstream failed to start") from errors[0]
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._stopping = True
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._loop = None

    def _run(self, sock: socket.socket, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._setup(sock))
        except BaseException as exc:
            errors.append(exc)
            sock.close()
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            assert self._runner is not None
            loop.run_until_complete(self._runner.cleanup())
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _setup(self, sock: socket.socket) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/chat/completions", self._openai)  # base_url given without /v1
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/models", self._list_models)
        # handler_cancellation: a client disconnect cancels a handler that is sleeping (latency, pacing),
        # otherwise an abandoned slow request would be noticed only at its next write.
        # shutdown_timeout: stop() must not wait for slow scripted requests to finish.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> FakeUpstream:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    # ---- public state ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._thread is None:
            raise RuntimeError("FakeUpstream is not started; call start() or use it as a context manager")
        return f"http://{self._host}:{self._port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    @property
    def disconnects(self) -> int:
        return self._disconnects

    def script(self, model: str, *scripts: ScriptLike) -> None:
        """Answers for `model`, consumed in order; the last repeats forever. No scripts = forget the model."""
        with self._lock:
            if scripts:
                self._scripts[model] = list(scripts)
            else:
                self._scripts.pop(model, None)

    def requests_for(self, model: str) -> list[RecordedRequest]:
        return [r for r in list(self.requests) if r.model == model]

    def reset(self) -> None:
        """Forget requests, counters, scripts and the default script (in-flight requests keep counting)."""
        with self._lock:
            self._scripts.clear()
        self.default = Script()
        self.requests = []
        self._disconnects = 0
        self._max_in_flight = self._in_flight

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until no request is in flight (the server notices disconnects asynchronously)."""
        deadline = time.monotonic() + timeout
        while self._in_flight:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    async def wait_idle_async(self, timeout: float = 5.0) -> bool:  # noqa: ASYNC109 - mirrors wait_idle
        deadline = time.monotonic() + timeout
        while self._in_flight:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    # ---- handlers --------------------------------------------------------------------------------

    def _next_script(self, model: str, body: dict[str, Any]) -> Script:
        with self._lock:
            queue = self._scripts.get(model)
            entry: ScriptLike = (queue.pop(0) if len(queue) > 1 else queue[0]) if queue else self.default
        script = entry if isinstance(entry, Script) else entry(body)
        if not isinstance(script, Script):
            raise TypeError(f"script callable for {model!r} returned {type(script).__name__}, not Script")
        return script

    async def _list_models(self, request: web.Request) -> web.Response:
        wire: Wire = "anthropic" if "anthropic-version" in request.headers else "openai"
        self.requests.append(self._record(request, None, wire, method="GET"))
        with self._lock:
            names = list(dict.fromkeys([*self._scripts, *self.models]))
        return web.json_response(_WIRES[wire].models_body(names))

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "openai")

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "anthropic")

    def _record(self, request: web.Request, body: Any, wire: Wire, method: str = "POST") -> RecordedRequest:
        model = body.get("model") if isinstance(body, dict) else None
        return RecordedRequest(
            path=request.path,
            model=model if isinstance(model, str) else None,
            body=body,
            headers={k.lower(): v for k, v in request.headers.items()},
            stream=bool(body.get("stream")) if isinstance(body, dict) else False,
            wire=wire,
            time=time.monotonic(),
            method=method,
        )

    async def _complete(self, request: web.Request, wire: Wire) -> web.StreamResponse:
        tracker = _Tracker(self)  # counted on arrival, before the body is even read
        resp: web.StreamResponse | None = None
        w = _WIRES[wire]
        try:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            rec = self._record(request, body, wire)
            self.requests.append(rec)
            if not isinstance(body, dict):
                return _error(w, 400, "request body must be a JSON object")
            problem = wire_openai.request_problem(body) if wire == "openai" else None
            if problem is not None:
                return _error(w, 400, problem)
            try:
                script = self._next_script(str(body.get("model") or ""), body)
            except Exception as exc:  # a broken test callable should be loud, not a hung request
                return _error(w, 500, f"FakeUpstream script failed: {exc!r}")
            failure = rec.failure = script.take_failure()
            plan = build_plan(script, body, failure, _ID_PREFIX[wire])
            rec.latency = script.draw_latency(self._rng)
            if rec.latency > 0:
                await asyncio.sleep(rec.latency)

            if failure is Failure.RESET:
                _abort(request, tracker)
            if failure in HTTP_FAILURES:
                return _http_failure(w, script, failure)
            if plan.stream:
                resp = web.StreamResponse(headers={**_SSE_HEADERS, **_id_header(wire, plan)})
                await resp.prepare(request)
                await _drive_stream(request, resp, plan, w, tracker)
                return resp
            if failure in (Failure.INVALID_JSON, Failure.MALFORMED_SSE):
                payload = _BROKEN_JSON
            elif failure is Failure.MALFORMED_CHUNK:
                payload = script.raw_chunk.encode()
            else:
                reply = w.message_body(plan) if wire == "anthropic" else w.completion_body(plan)
                payload = json.dumps(reply).encode()
            if failure is Failure.CUT:
                # Promise the whole body, deliver half: the client sees a truncated response.
                resp = web.StreamResponse(headers={"Content-Type": "application/json"})
                resp.content_length = len(payload)
                await resp.prepare(request)
                await resp.write(payload[: len(payload) // 2])
                _abort(request, tracker)
            return web.Response(body=payload, content_type="application/json", headers=_id_header(wire, plan))
        except _Aborted:
            return resp if resp is not None else web.Response()
        except asyncio.CancelledError:
            tracker.finish(disconnected=True)  # handler_cancellation: the client went away
            raise
        except ConnectionResetError:  # a write hit a closed socket: the client went away
            tracker.finish(disconnected=True)
            return resp if resp is not None else web.Response()
        finally:
            tracker.finish()


def _id_header(wire: Wire, plan: Plan) -> dict[str, str]:
    return {"x-request-id" if wire == "openai" else "request-id": f"req_{plan.request_id}"}


def _abort(request: web.Request, tracker: _Tracker) -> None:
    tracker.finish()
    if request.transport is not None:
        request.transport.abort()
    raise _Aborted


def _error(w: ModuleType, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(w.error_body(status, message), status=status, headers=headers)


def _http_failure(w: ModuleType, script: Script, failure: Failure) -> web.Response:
    if failure is Failure.RATE_LIMIT:
        status, message = 429, "Rate limit reached (fake upstream)."
    elif failure is Failure.HTTP_500:
        status, message = 500, "The server had an error while processing your request (fake upstream)."
    else:
        status = script.status_code or 500
        message = f"Scripted HTTP {status} from the fake upstream."
    message = script.error_message or message
    headers: dict[str, str] = {}
    if script.retry_after is not None:
        ra = script.retry_after
        headers["retry-after"] = str(int(ra)) if float(ra).is_integer() else str(ra)
        headers["retry-after-ms"] = str(int(ra * 1000))
    return _error(w, status, message, headers)


async def _drive_stream(
    request: web.Request, resp: web.StreamResponse, plan: Plan, w: ModuleType, tracker: _Tracker
) -> None:
    """Write the wire's frames with pacing, injecting CUT / MALFORMED_SSE / MALFORMED_CHUNK after
    `cut_after_tokens` tokens."""
    script, failure = plan.script, plan.failure
    frames = w.stream_frames(plan)
    delay = 1.0 / script.token_rate if script.token_rate else 0.0
    if script.burst and failure is None:
        tracker.finish()  # as below: done before the last byte leaves
        await resp.write(b"".join(frame.data for frame in frames))
        await resp.write_eof()
        return
    sent = 0
    malformed_sent = False
    for i, frame in enumerate(frames):
        at_cut_point = (frame.token and sent >= script.cut_after_tokens) or frame.tail
        if at_cut_point and failure is Failure.CUT:
            _abort(request, tracker)
        if at_cut_point and failure in (Failure.MALFORMED_SSE, Failure.INVALID_JSON) and not malformed_sent:
            malformed_sent = True
            await resp.write(w.malformed_frame())
        if at_cut_point and failure is Failure.MALFORMED_CHUNK and not malformed_sent:
            malformed_sent = True
            await resp.write(w.malformed_chunk(script.raw_chunk))
        if frame.token:
            if sent and delay:
                await asyncio.sleep(delay)
            sent += 1
        if i == len(frames) - 1:
            # Count the request done before the last byte leaves, so a client that has read the whole
            # stream always observes in_flight already decremented.
            tracker.finish()
        await resp.write(frame.data)
    await resp.write_eof()
