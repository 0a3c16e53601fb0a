"""Test helpers shipped with panelfuse: a scriptable fake LLM upstream for tests and benchmarks.

from panelfuse.testing import FakeUpstream, Script, Failure

with FakeUpstream() as fake:
    fake.script("gpt-x", Script(text="hi", latency=0.05), Script(failure=Failure.RATE_LIMIT))
    client = OpenAI(base_url=fake.openai_base_url, api_key="k")
"""

from panelfuse.testing.fake_upstream import FakeUpstream, RecordedRequest
from panelfuse.testing.scripts import DEFAULT_TEXT, Failure, Script, tokenize

__all__ = ["DEFAULT_TEXT", "Failure", "FakeUpstream", "RecordedRequest", "Script", "tokenize"]
