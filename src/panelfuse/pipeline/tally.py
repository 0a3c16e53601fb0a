"""Counting `vote`'s samples: groups of equal answers, ranked, the winner chosen. Pure.

A group's score is the sum of its members' weights (MemberSpec.weight, 1 when unset), so without
weights it is the number of votes. Ranking, highest first: score, then votes, then the group whose
first member comes earliest in the panel (A before B …). That last key is the tie-break: it is
deterministic and needs no model call, and it favours the members the operator listed first. The
answer returned is the winning group's first member's own text, verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VoteGroup:
    answer: str  # the reading the group shares (the judge's reading: its first member's normalised answer)
    members: tuple[str, ...]  # labels, in panel order
    weight: float

    @property
    def votes(self) -> int:
        return len(self.members)

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "members": list(self.members), "votes": self.votes, "weight": self.weight}


@dataclass(frozen=True)
class VoteTally:
    reading: str  # "normalise" or "judge": who grouped the answers
    groups: tuple[VoteGroup, ...]  # ranked, the winner first
    tie: bool  # the winner was chosen by the tie-break (its score and votes equal the runner-up's)

    @property
    def winner(self) -> str:
        """The label of the member whose answer is the answer."""
        return self.groups[0].members[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reading": self.reading,
            "winner": self.winner,
            "tie": self.tie,
            "groups": [g.to_dict() for g in self.groups],
        }


def tally(
    groups: Sequence[Sequence[str]],
    readings: Mapping[str, str],
    order: Sequence[str],
    weights: Mapping[str, float | None],
    reading: str,
) -> VoteTally:
    """Rank `groups` (lists of labels; every label once) by the rule above. `order`: the labels in panel
    order; `readings`: each label's normalised answer (a group is shown as its first member's)."""
    if not groups or not any(groups):
        raise ValueError("a vote needs at least one answer")
    position = {label: i for i, label in enumerate(order)}
    built = []
    for labels in groups:
        if not labels:
            continue
        members = tuple(sorted(labels, key=position.__getitem__))
        weight = sum(weights.get(m) or 1.0 for m in members)
        built.append(VoteGroup(readings.get(members[0], ""), members, weight))
    # Weights are summed floats: compared rounded, so 0.1 + 0.2 ties with 0.3.
    built.sort(key=lambda g: (-round(g.weight, 9), -g.votes, position[g.members[0]]))
    tie = len(built) > 1 and _score(built[0]) == _score(built[1])
    return VoteTally(reading, tuple(built), tie)


def _score(group: VoteGroup) -> tuple[float, int]:
    return round(group.weight, 9), group.votes


def group_by_reading(readings: Mapping[str, str], order: Sequence[str]) -> list[list[str]]:
    """The labels grouped by equal reading, groups in order of their first member."""
    groups: dict[str, list[str]] = {}
    for label in order:
        groups.setdefault(readings[label], []).append(label)
    return list(groups.values())
