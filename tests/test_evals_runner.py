"""The eval runner on the fake upstream: resume after an interruption, failures, mismatches, grading."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import fake_providers
from panelfuse.evals.configs import EvalConfig, parse_config
from panelfuse.evals.grading import Grader, parse_verdict
from panelfuse.evals.runner import EvalMismatchError, EvalRunner, EvalSettings
from panelfuse.evals.store import EvalStore
from panelfuse.evals.summary import summarize
from panelfuse.evals.tasks import load_tasks
from panelfuse.pricing import Price, PriceTable
from panelfuse.providers.registry import Providers
from panelfuse.store import RunStore
from panelfuse.testing import Failure, FakeUpstream, Script
from test_evals_support import CRITERIA_TOTAL, grader_parts, grader_script, write_tasks

PRICES = PriceTable({"fake/m1": Price(1.0, 2.0), "fake/m2": Price(1.0, 2.0), "fake/grader": Price(1.0, 1.0)})


class Interrupted(Exception):
    pass


class StopAfter:
    """A progress sink that interrupts the run (as Ctrl-C would) after `n` answers or grades."""

    def __init__(self, kind: str, n: int) -> None:
        self.kind, self.n, self.seen = kind, n, 0

    def start(self, answers: int, grades: int) -> None:
        pass

    def advance(self, kind: str, n: int = 1) -> None:
        if kind == self.kind:
            self.seen += n
            if self.seen >= self.n:
                raise Interrupted


@pytest.fixture
async def store(tmp_path: Path):
    s = await RunStore.open(f"sqlite+aiosqlite:///{tmp_path / 'eval.db'}")
    yield s
    await s.close()


def script_models(fake: FakeUpstream) -> None:
    fake.script("m1", Script(text="alpha gamma omega", prompt_tokens=10, completion_tokens=20))
    fake.script("m2", Script(text="alpha beta gamma", prompt_tokens=10, completion_tokens=20))
    fake.script("grader", grader_script)


def runner(store: RunStore, providers: Providers, progress=None, **settings) -> EvalRunner:
    grader = Grader(providers, "fake/grader", PRICES)
    settings.setdefault("name", "e1")
    return EvalRunner(store, providers, grader, PRICES, EvalSettings(**settings), progress)


async def test_resume_after_interruption_grades_nothing_twice(
    fake: FakeUpstream, store: RunStore, tmp_path: Path
) -> None:
    # Every answer call returns a distinct text, so each grader request names exactly one stored grade.
    serial = itertools.count()
    for model, text in (("m1", "alpha gamma omega"), ("m2", "alpha beta gamma")):
        fake.script(model, lambda body, text=text: Script(text=f"{text} n{next(serial)}"))
    fake.script("grader", grader_script)
    providers = fake_providers(fake)
    tasks = load_tasks(write_tasks(tmp_path / "t.jsonl"))
    problem = {t.id: t.problem for t in tasks}
    requirement = {(t.id, c.id): c.requirement for t in tasks for c in t.criteria}
    configs = [parse_config("single:fake/m1", providers), parse_config("single:fake/m2", providers)]
    total_grades = len(configs) * 2 * CRITERIA_TOTAL  # two passes
    evals = EvalStore(store.database)

    async def stored() -> tuple[dict, set]:
        answers = {k: a.content for k, a in (await evals.answers("e1")).items()}
        grades = {
            (answers[g.key[:3]], problem[g.task_id], requirement[(g.task_id, g.criterion_id)])
            for g in (await evals.grades("e1")).values()
        }
        return answers, grades

    # Interrupted (as by Ctrl-C) while answering, then again while grading. An interruption may
    # lose the calls in flight (at most `concurrency`), never a stored result.
    with pytest.raises(Interrupted):
        await runner(store, providers, StopAfter("answer", 3), passes=2, concurrency=1).run(tasks, configs)
    answers_1, _ = await stored()
    assert len(answers_1) == 3 and fake.requests_for("grader") == []
    with pytest.raises(Interrupted):
        await runner(store, providers, StopAfter("grade", 7), passes=2, concurrency=1).run(tasks, configs)
    answers_2, graded_2 = await stored()
    assert len(answers_2) == 8 and len(graded_2) == 7
    assert all(answers_2[k] == v for k, v in answers_1.items())  # stored answers were not asked again

    data = await runner(store, providers, passes=2, concurrency=1).run(tasks, configs)
    answers_3, graded_3 = await stored()
    assert answers_3 == answers_2 and len(graded_3) == total_grades
    asked = Counter((grader_parts(r.body)[2], *_problem_and_item(r.body)) for r in fake.requests_for("grader"))
    assert set(asked) == graded_3
    assert all(asked[g] == 1 for g in graded_2)  # what was graded before the resume was never asked again
    assert sum(asked.values()) <= total_grades + 1  # plus at most the one call lost in flight
    assert len(fake.requests_for("m1")) + len(fake.requests_for("m2")) <= 8 + 1

    before = len(fake.requests)
    again = await runner(store, providers, passes=2, concurrency=3).run(tasks, configs)
    assert len(fake.requests) == before  # a finished eval, rerun, asks nothing at all
    assert summarize(again).configs[0].mean == summarize(data).configs[0].mean == pytest.approx(0.125)


def _problem_and_item(body: dict) -> tuple[str, str]:
    user = body["messages"][-1]["content"]
    return user.split("<task>\n", 1)[1].split("\n</task>", 1)[0], grader_parts(body)[1]


async def test_failed_answers_score_zero_and_grader_failures_are_excluded(
    fake: FakeUpstream, store: RunStore, tmp_path: Path
) -> None:
    fake.script("m1", Script(text="alpha gamma omega", prompt_tokens=10, completion_tokens=20))
    fake.script("m2", Script(failure=Failure.HTTP, status_code=400))

    def flaky_grader(body):
        _, item, _ = grader_parts(body)
        return Script(text="no verdict here") if "beta" in item else grader_script(body)

    fake.script("grader", flaky_grader)
    providers = fake_providers(fake)
    tasks = load_tasks(write_tasks(tmp_path / "t.jsonl"))
    configs = [parse_config("single:fake/m1", providers), parse_config("single:fake/m2", providers)]
    data = await runner(store, providers).run(tasks, configs)
    m1, m2 = summarize(data).configs

    assert (m2.failures, m2.answers, m2.mean, m2.coverage) == (2, 2, 0.0, 0.0)
    assert "BadRequest" in (data.answers[("single:fake/m2", "t1", 0)].error or "")
    beta = data.grades[("single:fake/m1", "t1", 0, "b")]
    assert beta.verdict is None and beta.attempts == 3 and "not a JSON object" in (beta.error or "")
    assert (m1.grader_failures, m1.graded, m1.criteria) == (1, 5, 6)
    # t1 without the failed criterion: (+2 alpha, +1 gamma, −2 omega) / 3
    assert m1.task_scores["t1"].score == pytest.approx(1 / 3)
    # all grader requests were for m1's answers (a failed answer is not graded): 5 + 3 attempts
    assert len(fake.requests_for("grader")) == 5 + 3

    fake.script("grader", grader_script)
    data = await runner(store, providers, retry_failed=True).run(tasks, configs)
    assert len(fake.requests_for("grader")) == 8 + 1  # only the failed grade was asked again
    assert data.grades[("single:fake/m1", "t1", 0, "b")].verdict == "UNMET"
    assert summarize(data).configs[0].coverage == 1.0


async def test_changed_configuration_or_grader_is_refused(fake: FakeUpstream, store: RunStore, tmp_path: Path) -> None:
    script_models(fake)
    providers = fake_providers(fake)
    tasks = load_tasks(write_tasks(tmp_path / "t.jsonl"))
    await runner(store, providers).run(tasks, [parse_config("single:fake/m1", providers)])
    with pytest.raises(EvalMismatchError, match="different configuration"):
        await runner(store, providers).run(tasks, [parse_config("single:fake/m1", providers, max_tokens=5)])
    other = EvalRunner(store, providers, Grader(providers, "fake/m2", PRICES), PRICES, EvalSettings("e1"))
    with pytest.raises(EvalMismatchError, match="grades by fake/grader"):
        await other.run(tasks, [parse_config("single:fake/m1", providers)])
    # another name is another eval
    await runner(store, providers, name="e2").run(tasks, [parse_config("single:fake/m1", providers, max_tokens=5)])


async def test_grader_request_follows_the_protocol(fake: FakeUpstream, tmp_path: Path) -> None:
    fake.script("grader", grader_script)
    providers = fake_providers(fake)
    (t1, _) = load_tasks(write_tasks(tmp_path / "t.jsonl"))
    grader = Grader(providers, "fake/grader", PRICES)
    negative = next(c for c in t1.criteria if c.weight < 0)
    out = await grader.grade(t1, "alpha omega", negative)
    assert (out.verdict, out.attempts, out.grader) == ("MET", 1, "fake/grader")
    assert out.cost == pytest.approx(40 / 1e6)
    (req,) = fake.requests_for("grader")
    body = req.body
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["verdict"]["enum"] == ["MET", "UNMET"]
    assert body["temperature"] == 0
    kind, item, answer = grader_parts(body)
    assert (kind, item, answer) == ("MISTAKE", "Mentions omega", "alpha omega")
    text = json.dumps(body["messages"])
    assert "Tell me about the letters." in text  # the task
    assert "weight" not in text.lower() and "-2" not in text  # never the weight


def test_parse_verdict_repairs_and_rejects() -> None:
    assert parse_verdict('{"verdict": "met", "explanation": "ok"}') == ("MET", "ok")
    assert parse_verdict('{"verdict": "UNMET", "explanation": "cut sho')[0] == "UNMET"
    with pytest.raises(ValueError):
        parse_verdict('{"verdict": "MAYBE"}')
    with pytest.raises(ValueError):
        parse_verdict("")


async def test_qa_tasks_by_match_or_grader(fake: FakeUpstream, store: RunStore, tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(
        json.dumps({"id": "q1", "question": "Capital of France?", "answer": "Paris"})
        + "\n"
        + json.dumps({"id": "q2", "question": "Largest planet?", "answer": "Jupiter"})
        + "\n"
    )
    fake.script("m1", Script(text="It is Paris, of course."))
    fake.script("grader", Script(text='{"verdict": "MET", "explanation": "close enough"}'))
    providers = fake_providers(fake)
    tasks = load_tasks(path)
    cfg = [parse_config("single:fake/m1", providers)]
    data = await runner(store, providers).run(tasks, cfg)
    assert summarize(data).configs[0].task_scores["q1"].score == 1.0
    assert summarize(data).configs[0].task_scores["q2"].score == 0.0
    assert fake.requests_for("grader") == []  # match mode never asks the grader
    auto = EvalRunner(
        store, providers, Grader(providers, "fake/grader", PRICES, qa_mode="auto"), PRICES, EvalSettings("qa-auto")
    )
    data = await auto.run(tasks, cfg)
    assert len(fake.requests_for("grader")) == 1  # only q2, where the gold answer was not found
    assert summarize(data).configs[0].mean == 1.0


def test_config_strings(fake: FakeUpstream, tmp_path: Path) -> None:
    providers = fake_providers(fake)
    single = parse_config("base=single:fake/m1", providers, max_tokens=64)
    assert (single.label, single.kind, single.model, single.max_tokens) == ("base", "single", "fake/m1", 64)
    spec_file = tmp_path / "duo.toml"
    spec_file.write_text('members = ["fake/m1", "fake/m2"]\njudge = "fake/m1"\n')
    fusion = parse_config(str(spec_file), providers, timeout=5)
    assert (fusion.label, fusion.kind) == ("spec:duo", "fusion")
    assert fusion.spec is not None and fusion.spec.deadline_ms == 5000
    assert isinstance(fusion, EvalConfig) and fusion.fingerprint == parse_config(str(spec_file), providers).fingerprint
    bad = tmp_path / "bad.json"
    bad.write_text('{"members": []}')
    with pytest.raises(ValueError, match=r"bad\.json: field 'members'"):
        parse_config(str(bad), providers)
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        parse_config("preset:nope", providers)
    with pytest.raises(ValueError, match="expected single:MODEL"):
        parse_config("gpt", providers)


async def test_migration_matches_the_table_definitions(store: RunStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from panelfuse.store.schema import VERSION_TABLE, metadata

    def diff(conn):
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": False})
        return compare_metadata(ctx, metadata)

    async with store.engine.connect() as conn:
        changes = await conn.run_sync(diff)
    assert [c for c in changes if "eval_" in repr(c)] == []
