"""Which arm of an experiment a unit (a key, a user, a header's value) gets. Pure and deterministic:
the same experiment, unit and paused arms give the same arm on every replica and after every restart.

A unit's place is a point in [0, 1) from a hash of the experiment's name and the unit; the primary
arms own consecutive intervals sized by their shares, in the definition's order. A unit whose arm is
paused is placed again, with a second hash, among the arms still live (by their shares), so pausing an
arm moves only that arm's units, and resuming it brings the same units back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence

from panelfuse.experiment_spec import ArmSpec

UNIT_HASH_CHARS = 16  # what the record keeps of a unit: enough to count distinct units, not to read them


def point(experiment: str, unit: str, salt: str = "") -> float:
    """The unit's place in [0, 1) for this experiment (64 bits of SHA-256)."""
    digest = hashlib.sha256(f"{experiment}\x00{salt}\x00{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def by_shares(arms: Sequence[ArmSpec], x: float) -> ArmSpec:
    """The arm whose interval holds x, the intervals sized by the arms' shares."""
    total = sum(a.share or 0.0 for a in arms)
    edge = 0.0
    for arm in arms:
        edge += (arm.share or 0.0) / total
        if x < edge:
            return arm
    return arms[-1]  # x within rounding of 1.0


def assign(experiment: str, arms: Sequence[ArmSpec], unit: str, paused: Collection[str] = ()) -> ArmSpec | None:
    """The primary arm for `unit`, or None when every primary arm is paused."""
    primary = [a for a in arms if not a.shadow]
    live = [a for a in primary if a.name not in paused]
    if not live:
        return None
    first = by_shares(primary, point(experiment, unit))
    if first.name not in paused:
        return first
    return by_shares(live, point(experiment, unit, salt=first.name))


def unit_hash(unit: str) -> str:
    """What is stored of a unit."""
    return hashlib.sha256(unit.encode()).hexdigest()[:UNIT_HASH_CHARS]
