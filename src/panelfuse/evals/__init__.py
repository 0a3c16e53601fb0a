"""Built-in evaluation: DRACO-style rubric grading of fusion configurations, and side-by-side reports.

`tasks` loads task files (DRACO's JSONL, or simple question/answer rows), `grading` asks a grader
model one question per criterion, `scoring` and `bootstrap` are the pure arithmetic, `runner`
answers and grades every (configuration, task, pass) with results kept in the store, `report`
writes the markdown, CSV and PNG. The CLI entry is `panelfuse eval` (`evals.cli`).
"""

from panelfuse.evals.scoring import CriterionVerdict, TaskScore, pass_rate, rubric_score, score_pass
from panelfuse.evals.tasks import Criterion, Task, TaskFormatError, load_tasks, sample_path

__all__ = [
    "Criterion",
    "CriterionVerdict",
    "Task",
    "TaskFormatError",
    "TaskScore",
    "load_tasks",
    "pass_rate",
    "rubric_score",
    "sample_path",
    "score_pass",
]
