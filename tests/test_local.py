"""The embedded SmolLM2 model through LocalProvider (llama.cpp's server engine in process, xllamacpp)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import pytest

from conftest import require_local_extra
from panelfuse.config import Config
from panelfuse.providers.base import ChatRequest, fold_stream
from panelfuse.providers.errors import BadRequestError, DeadlineExceeded, NotFoundError
from panelfuse.providers.local import EMBEDDED_MODEL, LocalProvider, embedded_model_path, load_engine
from panelfuse.providers.registry import Providers

pytestmark = pytest.mark.local_model

require_local_extra()

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


def req(**kw) -> ChatRequest:
    kw.setdefault("model", EMBEDDED_MODEL)
    kw.setdefault("messages", HELLO)
    kw.setdefault("max_tokens", 16)
    kw.setdefault("timeout", 60)
    return ChatRequest(**kw)


@pytest.fixture(scope="module")
def provider() -> LocalProvider:
    return LocalProvider()


async def test_generation_with_seed(provider: LocalProvider) -> None:
    c = await provider.complete(req(seed=1, max_tokens=16))
    assert c.text.strip()
    assert c.usage.prompt_tokens > 0 and 0 < c.usage.completion_tokens <= 16 + 2
    assert c.usage.cost == 0.0
    assert c.finish_reason in ("stop", "length")
    assert provider.last_generation is not None and provider.last_generation.cancelled is False
    assert 0 < provider.last_generation.tokens <= 16


async def test_streaming_yields_pieces(provider: LocalProvider) -> None:
    events = [ev async for ev in provider.stream(req(seed=2, max_tokens=12, temperature=0))]
    texts = [ev.text for ev in events if ev.text]
    assert len(texts) >= 2
    assert events[-1].finish_reason in ("stop", "length") and events[-1].usage is not None


async def test_same_seed_and_temperature_zero_is_deterministic(provider: LocalProvider) -> None:
    r = req(seed=7, temperature=0, max_tokens=20)
    first = await provider.complete(r)
    second = await provider.complete(r)
    assert first.text.strip() and first.text == second.text


async def test_json_schema_grammar(provider: LocalProvider) -> None:
    schema = {
        "type": "object",
        "properties": {
            "color": {"type": "string", "enum": ["red", "green", "blue"]},
            "name": {"type": "string", "maxLength": 8},
        },
        "required": ["color", "name"],
        "additionalProperties": False,
    }
    rf = {"type": "json_schema", "json_schema": {"name": "pick", "schema": schema, "strict": True}}
    messages = [{"role": "user", "content": "Pick a color and a short name. Answer in JSON."}]
    r = req(messages=messages, response_format=rf, seed=3, temperature=0, max_tokens=40)
    c = await provider.complete(r)
    data = json.loads(c.text)
    assert data["color"] in ("red", "green", "blue")
    assert isinstance(data["name"], str) and len(data["name"]) <= 8


async def test_json_object_grammar(provider: LocalProvider) -> None:
    messages = [{"role": "user", "content": 'Reply with the JSON object {"ok": true}.'}]
    c = await provider.complete(
        req(messages=messages, response_format={"type": "json_object"}, seed=4, temperature=0, max_tokens=40)
    )
    if c.finish_reason == "stop":  # a JSON grammar without a schema may run out of tokens; if not, it parses
        json.loads(c.text)
    assert c.text.lstrip().startswith(("{", "["))


async def test_cancelled_generation_stops_early_and_model_stays_usable(provider: LocalProvider) -> None:
    messages = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
    got: list[str] = []
    three = asyncio.Event()

    async def consume() -> None:
        async for ev in provider.stream(req(messages=messages, max_tokens=300, seed=5, timeout=120)):
            if ev.text:
                got.append(ev.text)
                if len(got) == 3:
                    three.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(three.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    record = provider.last_generation
    assert record is not None
    assert record.cancelled is True
    assert record.tokens < 300
    # The worker released the model: a following call runs normally.
    c = await provider.complete(req(seed=6, max_tokens=8))
    assert c.text.strip()
    assert provider.last_generation.cancelled is False


async def test_deadline_stops_a_local_generation(provider: LocalProvider) -> None:
    messages = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]
    with pytest.raises(DeadlineExceeded):
        await provider.complete(req(messages=messages, max_tokens=300, seed=8, timeout=0.5))
    record = provider.last_generation
    assert record is not None and record.cancelled is True and record.tokens < 300


async def test_gguf_path_form_through_routing() -> None:
    path = embedded_model_path()
    providers = Providers(Config(), env={})
    p, route = providers.for_model(f"local/{path}")
    assert isinstance(p, LocalProvider) and route.provider == "local" and route.model == str(path)
    c = await p.complete(req(model=route.model, seed=1, max_tokens=6))
    assert c.text.strip()


async def test_configured_model_name(provider: LocalProvider) -> None:
    p = LocalProvider("local", {"tiny": str(embedded_model_path())})
    assert "tiny" in await p.list_models()
    c = await p.complete(req(model="tiny", seed=1, max_tokens=6))
    assert c.text.strip()


async def test_unknown_local_model_is_not_found(provider: LocalProvider) -> None:
    with pytest.raises(NotFoundError, match="unknown local model"):
        await provider.complete(req(model="no-such-model"))
    p, route = Providers(Config(), env={}).for_model("local/no-such-model")
    with pytest.raises(NotFoundError):
        await p.complete(req(model=route.model))


async def test_missing_gguf_file_is_not_found(provider: LocalProvider, tmp_path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        await provider.complete(req(model=str(tmp_path / "absent.gguf")))


async def test_tools_are_a_bad_request(provider: LocalProvider) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(BadRequestError):
        await provider.complete(req(tools=tools))


async def test_list_models_includes_embedded(provider: LocalProvider) -> None:
    assert EMBEDDED_MODEL in await provider.list_models()
    assert (await provider.list_models())[0] == EMBEDDED_MODEL


async def test_fold_stream_of_local(provider: LocalProvider) -> None:
    c = await fold_stream(EMBEDDED_MODEL, provider.stream(req(seed=9, max_tokens=8, temperature=0)))
    assert c.text.strip() and c.usage.completion_tokens > 0


# About 1,500 prompt tokens: the AMX crash needed only ~360 (AMX kernels run for larger batches).
LONG_PROMPT = "Why is the sky blue? " * 250

_LONG_GENERATION = f"""
import asyncio, json
from panelfuse.providers.base import ChatRequest
from panelfuse.providers.local import LocalProvider, load_engine, embedded_model_path

async def main():
    c = await LocalProvider().complete(ChatRequest(model="smollm2", max_tokens=16, seed=1, timeout=120,
        messages=[{{"role": "user", "content": {LONG_PROMPT!r}}}]))
    engine = load_engine(embedded_model_path())
    print(json.dumps({{"prompt_tokens": c.usage.prompt_tokens, "text": c.text,
                      "system_info": engine.system_info, "no_extra_bufts": engine.options.no_extra_bufts}}))

asyncio.run(main())
"""


def test_no_cpu_feature_can_crash_a_long_prompt() -> None:
    """The loaded library cannot reach AMX kernels (none compiled in, or the model kept out of their
    buffer), and a prompt long enough to take the batched matrix paths runs to the end. In a child
    process, so an illegal instruction is reported as this test's failure instead of killing pytest."""
    child = subprocess.run([sys.executable, "-c", _LONG_GENERATION], capture_output=True, text=True, timeout=240)
    assert child.returncode == 0, f"exit {child.returncode} (-4 is SIGILL): {child.stderr[-2000:]}"
    out = json.loads(child.stdout.strip().splitlines()[-1])
    assert out["prompt_tokens"] >= 512
    assert out["text"].strip()
    info = out["system_info"]
    assert "CPU :" in info  # llama_print_system_info() really answered
    assert "AMX" not in info or out["no_extra_bufts"] is True, info


def test_engine_settings_use_every_core_and_batch_slots() -> None:
    engine = load_engine(embedded_model_path())
    assert engine.slots >= 3  # a three-member panel decodes in one batch
    assert engine.threads >= 1 and engine.options.no_extra_bufts == ("AMX" in engine.system_info)
    # one engine per model file per process, however the file is named
    assert load_engine(embedded_model_path()) is engine
    assert load_engine(LocalProvider("local", {"tiny": str(embedded_model_path())}).model_path("tiny")) is engine


async def test_long_prompt_generation(provider: LocalProvider) -> None:
    c = await provider.complete(req(messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=12, seed=2))
    assert c.usage.prompt_tokens >= 512 and c.text.strip()


MEMBERS = [(0.3, 11), (0.7, 22), (1.0, 33)]
SKY = [{"role": "user", "content": "Why is the sky blue? Answer in two sentences."}]


async def test_batched_members_each_keep_their_own_sampler(provider: LocalProvider) -> None:
    """Three members decoded together, each with its own sampler, not one sequence copied three times:
    in one batch, a greedy member and two sampled members with different seeds all write different
    texts. Agreement is checked on solo runs only: llama.cpp does not promise bit-identical logits for
    two sequences whose prompts were read in different batches, so near-ties can part two members with
    the same settings after a few tokens (seen after 3 tokens and after ~15)."""
    fresh = [{"role": "user", "content": f"Why is the sky blue? ({uuid.uuid4().hex[:8]})"}]
    outs = await asyncio.gather(
        *(provider.complete(req(messages=fresh, temperature=t, seed=s, max_tokens=40)) for t, s in MEMBERS_APART)
    )
    texts = [c.text for c in outs]
    assert all(t.strip() for t in texts)
    assert len(set(texts)) == 3, texts  # greedy, and two seeds: three different answers from one batch

    # a sampled member's seed decides its text: the same seed again (solo) repeats it, another does not
    solo = req(messages=fresh, temperature=1.0, seed=7, max_tokens=24)
    first, again = await provider.complete(solo), await provider.complete(solo)
    other = await provider.complete(req(messages=fresh, temperature=1.0, seed=8, max_tokens=24))
    assert first.text == again.text and other.text != first.text


MEMBERS_APART = ((0.0, 1), (1.2, 1), (1.2, 2))


async def test_members_are_decoded_together_not_queued(provider: LocalProvider) -> None:
    """Every member has its first token before any member finishes: they share the decode steps."""
    order: list[tuple[str, int]] = []

    async def member(i: int, temperature: float, seed: int) -> None:
        seen = False
        async for ev in provider.stream(req(messages=SKY, temperature=temperature, seed=seed, max_tokens=40)):
            if ev.text and not seen:
                seen = True
                order.append(("first", i))
        order.append(("done", i))

    await asyncio.gather(*(member(i, t, s) for i, (t, s) in enumerate(MEMBERS)))
    first_done = next(k for k, (what, _) in enumerate(order) if what == "done")
    assert sorted(i for what, i in order[:first_done] if what == "first") == [0, 1, 2], order


async def test_cancelling_one_member_leaves_the_batch_running(provider: LocalProvider) -> None:
    story = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
    first_tokens = asyncio.Event()

    async def cancelled_member() -> int:
        n = 0
        async for ev in provider.stream(req(messages=story, max_tokens=400, seed=5, timeout=120)):
            if ev.text:
                n += 1
                if n == 3:
                    first_tokens.set()
        return n

    victim = asyncio.create_task(cancelled_member())
    others = [
        asyncio.create_task(provider.complete(req(messages=story, max_tokens=60, seed=s, temperature=0.8)))
        for s in (6, 7)
    ]
    await asyncio.wait_for(first_tokens.wait(), 60)
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    record = provider.last_generation
    assert record is not None and record.cancelled is True and record.tokens < 400
    finished = await asyncio.gather(*others)
    for c in finished:
        assert c.text.strip() and c.finish_reason in ("stop", "length") and c.usage.completion_tokens > 3


async def test_more_concurrent_calls_than_slots_all_finish(provider: LocalProvider) -> None:
    """Calls beyond the engine's slots wait in its queue; none is dropped or mixed with another: each
    answer speaks of its own word and of no other."""
    engine = load_engine(embedded_model_path())
    words = ["apple", "river", "violin", "tiger", "candle"][: engine.slots + 2]
    outs = await asyncio.gather(
        *(
            provider.complete(req(messages=[{"role": "user", "content": f"Repeat this word: {w}"}], temperature=0))
            for w in words
        )
    )
    for word, c in zip(words, outs, strict=True):
        text = c.text.lower()
        assert word in text and not any(other in text for other in words if other != word), (word, c.text)
        assert c.usage.completion_tokens > 0


async def test_prompt_beyond_the_context_is_a_bad_request(provider: LocalProvider) -> None:
    with pytest.raises(BadRequestError):
        await provider.complete(req(messages=[{"role": "user", "content": "sky " * 20000}], max_tokens=4))


def test_an_old_cpu_gets_a_clear_error_before_any_native_code(monkeypatch, tmp_path) -> None:
    """On an x86-64 CPU without AVX2 the prebuilt runtime would die on its first AVX2 instruction
    (seen under `qemu-x86_64 -cpu Nehalem`: exit 132); the engine is refused before it is imported."""
    import panelfuse.providers.local as local

    monkeypatch.setattr(local, "runtime_missing", lambda: ["avx2", "fma"])
    with pytest.raises(NotFoundError, match="lacks avx2, fma") as caught:
        load_engine(tmp_path / "never-loaded.gguf")
    assert "--no-binary xllamacpp" in caught.value.message
    assert str((tmp_path / "never-loaded.gguf").resolve()) not in local._engines
