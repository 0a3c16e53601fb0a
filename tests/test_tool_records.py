"""ToolUsage names its fields one by one (for speed): every field must be summed and shown."""

from __future__ import annotations

from dataclasses import fields

from panelfuse.tools.records import ToolUsage


def test_tool_usage_sums_and_shows_every_field():
    names = [f.name for f in fields(ToolUsage)]
    a = ToolUsage(**{n: i + 1 for i, n in enumerate(names)})
    b = ToolUsage(**{n: 10 * (i + 1) for i, n in enumerate(names)})
    total = ToolUsage.total([a, b])
    assert total.to_dict() == {n: 11 * (i + 1) for i, n in enumerate(names)}
    assert list(a.to_dict()) == names
