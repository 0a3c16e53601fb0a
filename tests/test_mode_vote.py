"""Mode `vote` over the fake upstream: the majority's answer verbatim, no synthesis call, the tally in
the result, ties broken by panel order; the judge's reading groups what the normaliser cannot."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from panelfuse.spec import FusionSpec, VoteSpec
from panelfuse.testing import Failure, Script
from pipeline_helpers import fusion, labels_in, spec


def samples(fake, *texts: str) -> FusionSpec:
    """One model sampled len(texts) times (its own seed each); the fake answers by seed."""
    by_seed = dict(enumerate(texts))

    def answer(body: dict[str, Any]) -> Script:
        return Script(text=by_seed[body["seed"]], prompt_tokens=10, completion_tokens=20)

    fake.script("m1", answer)
    fake.script("synth", Script(text="never asked"))
    members = [{"model": "fake/m1", "seed": i, "temperature": 0.7} for i in range(len(texts))]
    return spec(mode="vote", members=members)


async def test_the_majority_answer_is_returned_verbatim_without_synthesis(fake):
    s = samples(fake, "I think 41.", "The answer is 42.", "42", "Surely 42.0")
    stream = fusion(fake, s).stream("What is 6 x 7?")
    events = [e async for e in stream]
    result = stream.result
    assert result.status == "completed" and result.content == "The answer is 42."  # B: the first of the majority
    assert result.vote.winner == "B" and result.vote.reading == "normalise" and result.vote.tie is False
    groups = result.vote.to_dict()["groups"]
    assert groups[0] == {"answer": "42", "members": ["B", "C", "D"], "votes": 3, "weight": 3.0}
    assert groups[1]["answer"] == "41" and groups[1]["votes"] == 1
    assert fake.requests_for("synth") == [] and fake.requests_for("judge") == []
    assert result.synthesizer is None and result.judge is None and result.calls == 4
    assert result.degraded is False and result.model == "fake/m1"
    tallied = [e for e in events if e.type == "vote.tallied"]
    assert len(tallied) == 1 and tallied[0].data["winner"] == "B" and tallied[0].stage == "analysis"
    assert result.to_dict()["vote"]["groups"][0]["members"] == ["B", "C", "D"]


async def test_a_tie_goes_to_the_earliest_member(fake):
    s = samples(fake, "Paris", "Lyon.", "paris.", "The answer is: Lyon")
    result = await fusion(fake, s).run("Capital of France?")
    assert result.vote.tie is True and result.vote.winner == "A" and result.content == "Paris"


async def test_failed_samples_do_not_vote(fake):
    s = samples(fake, "7", "8", "8")
    fake.script("m2", Script(failure=Failure.HTTP, status_code=400))
    s = s.model_copy(update={"members": [*s.members[:2], s.members[2].model_copy(update={"model": "fake/m2"})]})
    result = await fusion(fake, s).run("q")
    assert result.vote.tie is True and result.content == "7"  # A and B one vote each; C failed
    assert result.degraded is True and result.calls == 3


async def test_the_judges_reading_groups_equivalent_answers(fake):
    s = samples(fake, "Paris, the city of light.", "Lyon", "It is Paris, of course.")
    s = s.model_copy(update={"vote": VoteSpec(reading="judge")})
    fake.script(
        "judge",
        lambda body: Script(text=json.dumps({"groups": [["A", "C"], ["B"]]}), prompt_tokens=100, completion_tokens=10),
    )
    result = await fusion(fake, s).run("Capital of France?")
    assert result.vote.reading == "judge" and result.vote.winner == "A" and result.vote.groups[0].votes == 2
    assert result.content == "Paris, the city of light."
    judge_calls = fake.requests_for("judge")
    assert len(judge_calls) == 1 and labels_in(judge_calls[0].body) == ["A", "B", "C"]
    assert judge_calls[0].body["max_tokens"] <= 200
    assert fake.requests_for("synth") == [] and result.calls == 4
    assert result.cost == pytest.approx(3 * (10 * 1 + 20 * 2) / 1e6 + (100 * 3 + 10 * 6) / 1e6)


async def test_an_unreadable_grouping_falls_back_to_the_normaliser_and_says_so(fake):
    s = samples(fake, "42", "41", "The answer is 42")
    s = s.model_copy(update={"vote": VoteSpec(reading="judge")})
    fake.script("judge", Script(text='{"groups": [["A"]]}'))  # B and C missing: not a grouping
    result = await fusion(fake, s).run("q")
    assert result.status == "completed" and result.vote.reading == "normalise" and result.content == "42"
    assert "grouping failed" in result.error and result.degraded is True


def test_the_vote_spec_names_the_bad_field():
    with pytest.raises(ValidationError) as exc:
        spec(mode="vote", vote={"reading": "tea leaves"})
    assert "vote.reading" in str(exc.value).replace("\n", ".")


async def test_the_estimate_counts_no_synthesis(fake):
    s = samples(fake, "1", "2", "3")
    normalised = fusion(fake, s).plan("q").estimate
    assert {c.stage for c in normalised.calls} == {"panel"}
    judged = fusion(fake, s.model_copy(update={"vote": VoteSpec(reading="judge")})).plan("q")
    assert {c.stage for c in judged.estimate.calls} == {"panel", "analysis"}
    assert all(c.max_tokens <= 200 for c in judged.estimate.calls if c.stage == "analysis")


async def test_the_cli_progress_shows_the_tally(fake):
    from rich.console import Console

    from panelfuse.cli.progress import ProgressPrinter

    s = samples(fake, "[7]", "8", "8")
    console = Console(record=True, width=200)
    printer = ProgressPrinter(console)
    stream = fusion(fake, s).stream("q")
    async for ev in stream:
        printer.handle(ev)
    assert "Vote (normalise): 8 ×2, 7 ×1; B's answer" in console.export_text()
