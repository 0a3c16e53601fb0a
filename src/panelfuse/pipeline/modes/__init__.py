"""The modes of a fusion run, each a strategy in its own module, registered here once.

Adding a mode: a module with a ModeStrategy subclass, its name added to `spec.Mode`, and one line
below (a test checks the registry and `spec.Mode` agree).
"""

from __future__ import annotations

from panelfuse.pipeline.modes.analyze import Analyze
from panelfuse.pipeline.modes.base import ModeStrategy
from panelfuse.pipeline.modes.best_of import BestOf
from panelfuse.pipeline.modes.escalate import Escalate
from panelfuse.pipeline.modes.judge_writes import JudgeWrites
from panelfuse.pipeline.modes.single import Single
from panelfuse.pipeline.modes.synthesize import Synthesize
from panelfuse.pipeline.modes.vote import Vote

MODES: dict[str, ModeStrategy] = {
    m.name: m for m in (Synthesize(), JudgeWrites(), BestOf(), Single(), Analyze(), Escalate(), Vote())
}


def mode_for(name: str) -> ModeStrategy:
    return MODES[name]


__all__ = ["MODES", "ModeStrategy", "mode_for"]
