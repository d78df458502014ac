"""A listing: what one scrape learnt of one project, one part per API area, immutable once built.

Each API area's lister contributes its `Part` (its records, or why not); `Listing` puts them
together and nothing changes either afterwards: the families, the encoder and the landing
page read them. The first area of the table (the tasks) is the one `oms_up` follows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from oms_exporter.errors import OmsError
from oms_exporter.model import Task, Totals, task_totals
from oms_exporter.settings import Target


@dataclass(frozen=True, slots=True)
class Part:
    """What one API area contributed to a listing: its records in id order, or why there are none."""

    records: Sequence[Any] | None = None  # None: failed, or the region does not offer the area
    error: OmsError | None = None
    offered: bool = True  # False: the region does not publish this API (no failure, no series)
    malformed: int = 0  # unreadable records left out
    requests: int = 0
    duration: float = 0.0


@dataclass(frozen=True, slots=True)
class TaskPart(Part):
    """The tasks' part: also the counts and sums per state (over every task, whatever gets series)."""

    counts: Mapping[int, int] = field(default_factory=dict)
    totals: Mapping[int, Totals] = field(default_factory=dict)
    finished_listed_at: float | None = None  # Unix time the finished states were last listed in full
    fallbacks: tuple[str, ...] = ()  # why finished states that lost tasks were listed in full, not probed


_NO_TASKS = TaskPart()


@dataclass(frozen=True, slots=True)
class Listing:
    """One project's listing: its parts by area name (every area switched on for it, in table order)."""

    target: Target
    taken_at: float  # Unix time the listing started (task ages are measured from it)
    parts: Mapping[str, Part]
    in_progress: bool = False  # an area still lists, past the deadline of the scrape this listing served

    @property
    def main(self) -> Part:
        """The part of the first area (the tasks): the listing is up when it is."""
        return next(iter(self.parts.values()))

    @property
    def error(self) -> OmsError | None:
        return self.main.error

    @property
    def up(self) -> bool:
        return self.main.error is None

    @property
    def duration(self) -> float:
        return self.main.duration

    @property
    def _tasks(self) -> TaskPart:
        part = self.main
        return part if isinstance(part, TaskPart) else _NO_TASKS

    @property
    def tasks(self) -> Sequence[Task]:
        return self.main.records or () if self.up else ()

    @property
    def counts(self) -> Mapping[int, int]:
        return self._tasks.counts

    @property
    def totals(self) -> Mapping[int, Totals]:
        return self._tasks.totals

    @property
    def malformed(self) -> int:
        return self.main.malformed

    @property
    def finished_listed_at(self) -> float | None:
        return self._tasks.finished_listed_at

    @property
    def fallbacks(self) -> tuple[str, ...]:
        return self._tasks.fallbacks

    @property
    def requests(self) -> int:
        return sum(p.requests for p in self.parts.values())

    @property
    def collectors(self) -> dict[str, OmsError | None]:
        """Every area switched on -> its error (None: listed)."""
        return {name: p.error for name, p in self.parts.items()}

    def records(self, area: str) -> Sequence[Any] | None:
        """The records of `area`; None when it was not listed (off, failed, not offered)."""
        part = self.parts.get(area)
        return None if part is None else part.records

    @classmethod
    def failed(cls, target: Target, taken_at: float, areas: Sequence[str], error: OmsError,
               in_progress: bool = False) -> Listing:
        """A listing in which every area failed with `error`."""
        return cls(target, taken_at, {name: failed_part(i, error) for i, name in enumerate(areas)}, in_progress)


def failed_part(index: int, error: OmsError) -> Part:
    """The part of the area at `index` of a listing (0: the tasks') that failed with `error`."""
    return (TaskPart if index == 0 else Part)(error=error)


def complete_tasks(tasks: Sequence[Task], **fields: Any) -> TaskPart:
    """The part of a complete listing of `tasks` (in id order): with their counts and sums per state."""
    counts, totals = task_totals(tasks)
    return TaskPart(records=tasks, counts=counts, totals=totals, **fields)
