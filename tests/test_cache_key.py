"""The response cache's key and the request's cache headers (service/cache_key.py, service/cache.py):
pure functions, no server."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from panelfuse.service.cache import CacheDirective, cache_directive, cache_headers, storable, ttl_for
from panelfuse.service.cache_key import (
    ANONYMOUS_SCOPE,
    cache_key,
    cache_scope,
    canonical_json,
    normalise_content,
    normalise_messages,
)
from panelfuse.service.plugin import spec_from_request
from panelfuse.service.requests import ChatCompletionRequest, FusionPlugin
from panelfuse.spec import MAX_CACHE_TTL_S, FusionSpec
from pipeline_helpers import spec

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]
SCOPE = "key:key_1"


def key(s: FusionSpec | None = None, messages: Any = None, scope: str = SCOPE, prompt_version: str = "p1") -> str:
    return cache_key(scope, s or spec(), MESSAGES if messages is None else messages, prompt_version)


def test_the_key_is_a_stable_sha256():
    k = key()
    assert len(k) == 64 and int(k, 16) >= 0
    assert key() == k


def test_key_order_and_json_spelling_do_not_matter():
    reordered = [{"content": m["content"], "role": m["role"]} for m in MESSAGES]
    assert key(messages=reordered) == key()
    same = spec(reasoning={"effort": "high", "max_tokens": 10})
    flipped = spec(reasoning={"max_tokens": 10, "effort": "high"})
    assert key(same) == key(flipped)
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == '{"a":[1,{"c":3,"d":2}],"b":1}'


def test_surrounding_whitespace_line_endings_and_a_lone_text_part_do_not_matter():
    spaced = [{"role": "system", "content": "  Be brief.\n"}, {"role": "user", "content": "Why is the sky blue?  "}]
    assert key(messages=spaced) == key()
    parts = [MESSAGES[0], {"role": "user", "content": [{"type": "text", "text": "Why is the sky blue?"}]}]
    assert key(messages=parts) == key()
    crlf = [{"role": "user", "content": "a\r\nb"}]
    assert key(messages=crlf) == key(messages=[{"role": "user", "content": "a\nb"}])
    assert key(messages=[{**MESSAGES[1], "name": None}]) == key(messages=[MESSAGES[1]])  # null is absent


def test_whitespace_inside_a_message_matters():
    inner = [MESSAGES[0], {"role": "user", "content": "Why is the  sky blue?"}]
    assert key(messages=inner) != key()
    code = [{"role": "user", "content": "def f():\n    return 1"}]
    assert key(messages=code) != key(messages=[{"role": "user", "content": "def f():\n  return 1"}])


def test_parts_other_than_one_text_part_are_kept_as_they_are():
    two = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert normalise_content(two) == two
    image = [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    assert normalise_content(image) == image
    assert normalise_content(None) is None
    assert normalise_messages([{"role": "user", "content": " hi "}]) == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "changed",
    [
        [{"role": "user", "content": "Why is the sea blue?"}],  # another question
        [{"role": "system", "content": "Be thorough."}, MESSAGES[1]],  # another system prompt
        [MESSAGES[1]],  # a turn less
        [*MESSAGES, {"role": "assistant", "content": "Rayleigh."}, {"role": "user", "content": "More?"}],
        [{"role": "developer", "content": "Be brief."}, MESSAGES[1]],  # another role
        [MESSAGES[0], {**MESSAGES[1], "name": "ann"}],
    ],
)
def test_every_change_of_the_conversation_changes_the_key(changed):
    assert key(messages=changed) != key()


BASE: dict[str, Any] = {
    "members": [{"model": "fake/m1"}, {"model": "fake/m2"}, {"model": "fake/m3"}],
    "judge": {"model": "fake/judge"},
    "synthesizer": {"model": "fake/synth"},
    "deadline_ms": 10_000,
    "max_tokens": 100,
}


def changed_spec(path: str, value: Any) -> FusionSpec:
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    target = data
    for p in parents:
        target = target[int(p)] if p.isdigit() else target.setdefault(p, {})
    target[last] = value
    return FusionSpec.model_validate(data)


# Every field of the spec that can change a completed answer, each changed once.
ANSWER_CHANGING = [
    ("members", [{"model": "fake/m1"}, {"model": "fake/m2"}]),
    ("members.0.model", "fake/m9"),
    ("members.0.weight", 2.0),
    ("members.0.temperature", 0.1),
    ("members.0.seed", 7),
    ("members.0.fallbacks", ["fake/backup"]),
    ("judge.model", "fake/other-judge"),
    ("judge.fallbacks", ["fake/backup"]),
    ("judge.criteria", "accuracy first"),
    ("judge.dimensions", ["risks"]),
    ("synthesizer.model", "fake/other-synth"),
    ("synthesizer.fallbacks", ["fake/backup"]),
    ("mode", "judge-writes"),
    ("mode", "best-of"),
    ("mode", "single"),
    ("quorum", 2),
    ("grace_ms", 500),
    ("hedge_ms", 300),  # a hedge may answer from the fallback
    ("members.0.hedge_ms", 300),
    ("max_tokens", 200),
    ("max_tool_calls", 2),
    ("panel_tools", []),
    ("judge_tools", ["web_search"]),
    ("search_max_results", 3),
    ("panel_sees", "conversation"),
    ("temperature", 0.5),
    ("reasoning", {"effort": "low"}),
    ("response_format", {"type": "json_object"}),
    ("answer.max_tokens", 50),
    ("answer.temperature", 0.2),
    ("answer.stop", ["END"]),
    ("answer.seed", 1),
    ("answer.reasoning", {"effort": "high"}),
    ("mode", "escalate"),
    ("mode", "vote"),
    ("escalation.first_stage", 1),
    ("escalation.rule", "overlap"),
    ("vote.reading", "judge"),
]


@pytest.mark.parametrize(("path", "value"), ANSWER_CHANGING, ids=[f"{p}={v}" for p, v in ANSWER_CHANGING])
def test_every_field_that_changes_the_answer_changes_the_key(path, value):
    assert key(changed_spec(path, value)) != key(FusionSpec.model_validate(BASE))


@pytest.mark.parametrize(
    ("path", "value"),
    [("cache_ttl_s", 600), ("preset", "another-name"), ("deadline_ms", 50_000), ("max_cost", 0.5)],
)
def test_fields_that_cannot_change_a_completed_answer_leave_the_key_alone(path, value):
    assert key(changed_spec(path, value)) == key(FusionSpec.model_validate(BASE))


def test_the_answer_spec_fields_are_all_covered():
    # A new AnswerSpec or FusionSpec field must be placed: in the key (listed above) or out of it.
    covered = {p.split(".")[0] for p, _ in ANSWER_CHANGING} | {"cache_ttl_s", "preset", "deadline_ms", "max_cost"}
    assert set(FusionSpec.model_fields) <= covered
    answer_fields = {p.split(".")[1] for p, _ in ANSWER_CHANGING if p.startswith("answer.")}
    assert answer_fields == set(FusionSpec.model_fields["answer"].annotation.model_fields)  # type: ignore[union-attr]


def test_the_scope_and_prompt_version_change_the_key():
    assert key(scope="key:key_2") != key()
    assert key(scope=cache_scope(None)) != key()
    assert key(prompt_version="p2") != key()


def test_scopes():
    assert cache_scope("key_1") == "key:key_1"
    assert cache_scope("pt_abc") == "key:pt_abc"  # a passthrough token's hash is its own scope
    assert cache_scope(None) == ANONYMOUS_SCOPE
    assert cache_scope("key_1", shared=True) == cache_scope("key_2", shared=True) == "gateway"


@pytest.mark.parametrize(
    ("headers", "read", "write"),
    [
        ({}, True, True),
        ({"X-Panelfuse-Cache": "no-cache"}, False, True),
        ({"x-panelfuse-cache": "no-store"}, True, False),
        ({"X-Panelfuse-Cache": "No-Cache, no-store"}, False, False),
        ({"Cache-Control": "no-cache"}, False, True),
        ({"cache-control": "max-age=0, no-store"}, True, False),
        ({"Cache-Control": "max-age=60"}, True, True),
        ({"X-Other": "no-cache"}, True, True),
    ],
)
def test_the_request_headers(headers, read, write):
    assert cache_directive(headers) == CacheDirective(read=read, write=write)


def test_the_response_header():
    assert cache_headers("hit") == {"X-Panelfuse-Cache": "hit"}
    assert cache_headers("miss") == {"X-Panelfuse-Cache": "miss"}
    assert cache_headers(None) == {}


def test_the_ttl_the_spec_or_the_gateway_default():
    assert ttl_for(None, None) == 0
    assert ttl_for(None, 300) == 300
    assert ttl_for(60, 300) == 60
    assert ttl_for(0, 300) == 0  # the spec turns it off whatever the default
    assert ttl_for(None, 0) == 0


def test_the_option_is_bounded_and_named():
    with pytest.raises(ValidationError, match="cache_ttl_s"):
        FusionPlugin.model_validate({"id": "fusion", "cache_ttl_s": MAX_CACHE_TTL_S + 1})
    with pytest.raises(ValidationError, match="cache_ttl_s"):
        FusionPlugin.model_validate({"id": "fusion", "cache_ttl_s": -1})
    with pytest.raises(ValidationError, match="cache_ttl_s"):
        spec(cache_ttl_s="soon")


def test_the_plugin_and_a_preset_set_the_ttl():
    req = ChatCompletionRequest(model="panelfuse/test", messages=[{"role": "user", "content": "q"}])
    presets = {"test": {**BASE, "cache_ttl_s": 120}}
    assert spec_from_request(req, None, "test", "test", presets).cache_ttl_s == 120
    plugin = FusionPlugin(id="fusion", cache_ttl_s=30)
    assert spec_from_request(req, plugin, "test", "test", presets).cache_ttl_s == 30
    off = FusionPlugin(id="fusion", cache_ttl_s=0)
    assert spec_from_request(req, off, "test", "test", presets).cache_ttl_s == 0


def test_only_completed_undegraded_answers_are_storable():
    from panelfuse.pipeline.result import FusionResult, MemberResult

    def result(**kw: Any) -> FusionResult:
        base: dict[str, Any] = {
            "run_id": "run_1",
            "preset": None,
            "mode": "single",
            "prompt_version": "p",
            "expects_analysis": False,
        }
        return FusionResult(**{**base, **kw})

    assert storable(result(status="completed", content="a"))
    assert not storable(result(status="failed"))
    assert not storable(result(status="cancelled"))
    assert not storable(result(status="completed", panel=[MemberResult("A", "fake/m1", status="failed")]))
    assert not storable(result(status="completed", expects_analysis=True))  # the analysis is missing
    assert not storable(result(status="completed", stopped_by_max_cost=True))
    assert not storable(result(status="completed", cached=True))  # a hit is not stored again
