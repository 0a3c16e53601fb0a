"""`panelfuse ask` / `estimate` on the fusion path: live progress as a user sees it."""

from __future__ import annotations

import json

from rich.console import Console
from typer.testing import CliRunner

from panelfuse.cli import app
from panelfuse.cli.progress import ProgressPrinter
from panelfuse.testing import Failure, Script
from pipeline_helpers import fusion, script_panel, spec

runner = CliRunner(env={"COLUMNS": "240"})


def write_config(tmp_path, fake) -> str:
    path = tmp_path / "panelfuse.toml"
    path.write_text(
        'default_provider = "fake"\n'
        "[providers.fake]\n"
        'kind = "openai_compat"\n'
        f'base_url = "{fake.openai_base_url}"\n'
        'api_key = "sk-test-0123456789"\n'
        "[prices]\n"
        '"fake/m1" = { input = 1.0, output = 2.0 }\n'
        '"fake/m2" = { input = 1.0, output = 2.0 }\n'
        '"fake/judge" = { input = 3.0, output = 6.0 }\n'
    )
    return str(path)


def test_ask_shows_members_analysis_answer_and_totals(tmp_path, fake):
    script_panel(fake, m2=Script(failure=Failure.HTTP, status_code=401), synth=Script(text="unused"))
    fake.script(
        "judge",
        lambda body: Script(
            text=json.dumps(
                {
                    "consensus": ["scattering"],
                    "contradictions": [],
                    "partial_coverage": [],
                    "unique_insights": [{"model": "A", "insight": "wavelength dependence"}],
                    "blind_spots": ["sunsets"],
                }
            )
        ),
        Script(text="The sky is blue: scattering."),
    )
    cfg = write_config(tmp_path, fake)
    out = runner.invoke(
        app,
        [
            "ask",
            "--config",
            cfg,
            "--panel",
            "fake/m1,fake/m2,fake/m3",
            "--judge",
            "fake/judge",
            "--quorum",
            "2",
            "Why is the sky blue?",
        ],
    )
    text = out.output
    assert out.exit_code == 0, text
    assert "A fake/m1 started" in text and "A fake/m1 answered" in text
    assert "B fake/m2 failed" in text and "401" in text
    assert "Analysis by fake/judge" in text
    assert "Consensus" in text and "• scattering" in text
    assert "Unique insights" in text and "A (fake/m1): wavelength dependence" in text
    assert "Blind spots" in text
    assert "Answer" in text and "The sky is blue: scattering." in text
    assert "Totals" in text and "panel A" in text and "degraded" in text


def test_ask_json_prints_the_whole_result(tmp_path, fake):
    script_panel(fake)
    cfg = write_config(tmp_path, fake)
    out = runner.invoke(
        app,
        [
            "ask",
            "--config",
            cfg,
            "--panel",
            "fake/m1,fake/m2",
            "--judge",
            "fake/judge",
            "--synthesizer",
            "fake/synth",
            "--json",
            "q",
        ],
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["status"] == "completed"
    assert [m["member"] for m in data["panel"]] == ["A", "B"]
    assert data["analysis"]["consensus"] == ["the sky scatters blue light"]
    assert data["content"] == "The sky is blue because air scatters short wavelengths."
    assert data["usage"]["cost_details"]["panel"]["A"] > 0


def test_ask_fails_with_each_members_reason(tmp_path, fake):
    script_panel(
        fake, m1=Script(failure=Failure.HTTP, status_code=401), m2=Script(failure=Failure.HTTP, status_code=404)
    )
    cfg = write_config(tmp_path, fake)
    out = runner.invoke(app, ["ask", "--config", cfg, "--panel", "fake/m1,fake/m2", "--judge", "fake/judge", "q"])
    assert out.exit_code == 1
    assert "Fusion failed" in out.output
    assert "A (fake/m1)" in out.output and "B (fake/m2)" in out.output


def test_estimate_prints_the_worst_case(tmp_path, fake):
    cfg = write_config(tmp_path, fake)
    out = runner.invoke(
        app,
        [
            "estimate",
            "--config",
            cfg,
            "--panel",
            "fake/m1,fake/m2",
            "--judge",
            "fake/judge",
            "--max-tokens",
            "100",
            "--json",
            "x" * 400,
        ],
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    p = 104
    judge_prompt = p + 2 * 100 + 400
    expected = 2 * (p + 200) / 1e6 + (judge_prompt * 3 + 600) / 1e6 + ((judge_prompt + 100) * 3 + 600) / 1e6
    assert abs(data["total"] - expected) < 1e-12
    assert data["unpriced"] == []


def test_unknown_preset_is_a_clear_error(tmp_path, fake):
    cfg = write_config(tmp_path, fake)
    out = runner.invoke(app, ["ask", "--config", cfg, "--preset", "nope", "q"])
    assert out.exit_code == 2
    assert "unknown preset 'nope'" in out.output


async def test_progress_printer_on_a_recording_console(fake):
    script_panel(fake, m3=Script(text="late", latency=30))
    console = Console(record=True, width=200)
    printer = ProgressPrinter(console)
    f = fusion(fake, spec(grace_ms=50))
    stream = f.stream("q")
    async for ev in stream:
        printer.handle(ev)
    printer.totals(stream.result)
    text = console.export_text()
    assert "C fake/m3 cut after the grace period" in text
    assert "Contradictions" in text and "cause" in text
    assert "Partial coverage" in text and "A (fake/m1), B (fake/m2)" in text
    assert stream.result.content in text


def test_models_check_confirms_preset_ids_against_the_provider(tmp_path, fake):
    fake.models = ["m1", "judge"]
    cfg = write_config(tmp_path, fake)
    with open(cfg, "a") as f:
        f.write('[presets.mine]\nmembers = ["fake/m1", "fake/gone"]\njudge = "fake/judge"\n')
    out = runner.invoke(app, ["models", "check", "--config", cfg])
    lines = {tuple(cell.strip() for cell in line.split("│")) for line in out.output.splitlines() if "│" in line}
    assert ("mine", "fake/m1", "verified") in lines
    assert ("mine", "fake/gone", "missing") in lines
    assert ("mine", "fake/judge", "verified") in lines
    assert ("local", "local/smollm2", "verified") in lines
    assert out.exit_code == 1  # a missing id fails the check


def test_verify_model_ids_is_pure():
    from panelfuse.spec import verify_model_ids

    ids = [("p/a", "p", "a"), ("p/b", "p", "b"), ("q/c", "q", "c")]
    assert verify_model_ids(ids, {"p": {"a"}, "q": None}) == [
        ("p/a", "p", "verified"),
        ("p/b", "p", "missing"),
        ("q/c", "q", "unverified"),
    ]
