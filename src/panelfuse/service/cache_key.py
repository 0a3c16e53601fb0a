"""The response cache's key (docs/cache.md): a hash of who asks, what the run does and what it is asked.
Pure.

- who: the caller's scope (their key; or the gateway as a whole when the operator shares the cache).
  One tenant must not learn another's prompts by how fast an answer comes back.
- what the run does: the spec as canonical JSON, without the fields that cannot change a completed
  answer (`NOT_IN_KEY`), with the prompt version (new prompts, new answers).
- what it is asked: the messages as the run sees them, normalised only where the model reads the same
  thing (JSON key order, a lone text part or a plain string, line endings, surrounding whitespace).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from panelfuse.spec import FusionSpec

KEY_VERSION = 1  # bumped when what goes into the key changes: older entries are simply never found
# Spec fields that do not change a completed, non-degraded answer: the cache option itself, the preset's
# name (its contents are the spec), and the guards (a run they stop is failed or degraded, never cached).
NOT_IN_KEY = frozenset({"cache_ttl_s", "preset", "deadline_ms", "max_cost"})
SHARED_SCOPE = "gateway"
ANONYMOUS_SCOPE = "local"  # no key: auth is off, or the admin key (the operator)


def cache_scope(key_id: str | None, *, shared: bool = False) -> str:
    """Whose cache a request reads: its key's (a panelfuse key's id, or a passthrough token's hash), or
    the gateway's when the operator shares one cache between keys."""
    if shared:
        return SHARED_SCOPE
    return f"key:{key_id}" if key_id is not None else ANONYMOUS_SCOPE


def canonical_json(value: Any) -> str:
    """One spelling per value: keys sorted, no insignificant whitespace, text as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _text(value: str) -> str:
    return value.replace("\r\n", "\n").strip()


def normalise_content(content: Any) -> Any:
    """A message's content as the model reads it: a list holding one text part is that text; text is
    compared without surrounding whitespace; every other part stays as it is (images, audio, several
    text parts, whose joins the provider decides)."""
    if isinstance(content, str):
        return _text(content)
    if isinstance(content, list) and len(content) == 1:
        part = content[0]
        if isinstance(part, Mapping) and part.get("type") == "text" and set(part) <= {"type", "text"}:
            text = part.get("text")
            if isinstance(text, str):
                return _text(text)
    return content


def normalise_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as the key sees it: absent and null fields are the same, contents normalised."""
    out = []
    for message in messages:
        m = {k: v for k, v in message.items() if v is not None}
        if "content" in m:
            m["content"] = normalise_content(m["content"])
        out.append(m)
    return out


def spec_material(spec: FusionSpec) -> dict[str, Any]:
    """The spec's part of the key: every field that can change the answer."""
    return spec.model_dump(mode="json", exclude=set(NOT_IN_KEY))


def cache_key(scope: str, spec: FusionSpec, messages: Sequence[Mapping[str, Any]], prompt_version: str) -> str:
    """The key (sha256, hex) of a request: equal exactly when scope, answer-changing spec, prompt version
    and normalised messages are."""
    material = {
        "v": KEY_VERSION,
        "scope": scope,
        "prompt_version": prompt_version,
        "spec": spec_material(spec),
        "messages": normalise_messages(messages),
    }
    return hashlib.sha256(canonical_json(material).encode("utf-8")).hexdigest()
