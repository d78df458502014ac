"""Listing by liveness, the decisions: a pure function from what a round saw to what to do next.

Tasks in a live state (waiting, migrating, paused, retrying, pausing) are listed in full on
every scrape. Finished tasks (failed, succeeded) do not change until their owner restarts
them or deletes them, so the lister keeps them from one scrape to the next (the `View`) and
keeps them exact cheaply. A round of listing fills a `Round` (the first batch: every live
state in full, the first page of each finished state or, when they are due, the whole of
them, and the counts); `reconcile(view, round, scope)` compares it with the view and answers:

- `Serve`: the new view, exact;
- `Fetch`: read more first (the total again, more pages of a finished state, a finished
  state in full, ShowTask of some tasks), then ask again;
- `Again`: the round was disturbed by tasks moving while it listed: start another;
- `Everything`: the counts cannot be explained: page through every task instead.

What it checks, in this order:

1. The counts add up: per group, the state counts (a task listed in two states, having
   moved while they were listed, counted once) equal the unfiltered `count`. New tasks make
   the total be asked again, so that a creation cannot hide a task missed while it moved.
   Where `status=6` is refused as a filter, retrying tasks are what the total leaves.
2. Every task that was live is placed: seen in a state now, or followed with ShowTask to
   where it went (a finished state, another live state, gone). When many left at once (or
   ShowTask is refused) the finished states are listed in full instead.
3. A finished state known by its first page keeps the view's tasks, moved by what was seen;
   while its pages hold only tasks it did not have (arrivals), the next page is read, so
   arrivals beyond the first page are seen. If its count still differs from what is kept
   (a deletion), it is listed in full, and the tasks it lost unseen are followed.

Every finished state is listed in full at least every refresh interval (`Scope.refresh`).
Before serving, the invariants are checked in code (`_broken`): per scope the counts add up
to the total, each kept finished state holds as many tasks as its count, and every
previously live task is placed or known gone; a view that breaks one is never served.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from oms_exporter.model import FINISHED_STATUSES, STATUS_NAMES, Task, Totals, state_totals

RETRYING = 6
LIVE_STATES = tuple(s for s in STATUS_NAMES if s not in FINISHED_STATUSES)
Key = tuple[int, str | None]  # (state, group_id filter)
Tasks = Mapping[int, Task]


@dataclass(frozen=True, slots=True)
class Scope:
    """What a round of one target lists, and what the lister has learnt of OMS."""

    states: tuple[int, ...]  # served: the target's `statuses`, or all
    groups: tuple[str | None, ...]  # the target's `group_ids`, or (None,): every group
    limit: int  # records per page
    status6: bool = True  # OMS accepts status=6 (retrying) as a filter
    show: bool = True  # OMS answers ShowTask
    refresh: bool = False  # the finished states are due for a listing in full
    last: bool = False  # no round after this one

    @property
    def live(self) -> tuple[int, ...]:
        """Every live state that can be listed, in scope or not: a task leaving one is followed."""
        return tuple(s for s in LIVE_STATES if s != RETRYING or self.status6)

    @property
    def finished(self) -> tuple[int, ...]:
        return tuple(s for s in self.states if s in FINISHED_STATUSES)

    @property
    def outside(self) -> tuple[int, ...]:
        """Finished states out of scope: only counted."""
        return tuple(s for s in sorted(FINISHED_STATUSES) if s not in self.states)

    @property
    def checked(self) -> bool:
        """Whether the counts can be checked against the total (retrying tasks are counted, or served)."""
        return self.status6 or RETRYING in self.states

    def keys(self, state: int) -> list[Key]:
        return [(state, g) for g in self.groups]

    def tracked(self) -> tuple[int, ...]:
        """The states a round lists: every live one it can list, and the finished ones in scope."""
        return (*self.live, *self.finished)

    def placed(self) -> tuple[int, ...]:
        """The states a round places tasks in: every live one (a task followed into one it cannot list,
        retrying where status=6 is refused, stays followed), and the finished ones in scope."""
        return (*LIVE_STATES, *self.finished)


@dataclass(frozen=True, slots=True)
class View:
    """What the last complete listing left: tasks per state, and the sums per served state."""

    live: Tasks = field(default_factory=dict)  # in a live state, in scope or not
    finished: Mapping[int, Tasks] = field(default_factory=dict)  # finished state in scope -> its tasks
    sums: Mapping[int, tuple[int, Totals]] = field(default_factory=dict)  # served state -> (count, sums)
    listed_at: float | None = None  # Unix time the finished states were last listed in full


@dataclass
class Round:
    """What one round has seen so far; the driver adds to it as `Fetch` asks."""

    pages: dict[int, dict[int, Task]] = field(default_factory=dict)  # state -> tasks listed in it
    whole: set[int] = field(default_factory=set)  # states listed in full in the first batch
    heads: dict[Key, int] = field(default_factory=dict)  # finished (state, group) -> pages read from its head
    counts: dict[Key, int] = field(default_factory=dict)  # of the first batch
    totals: dict[str | None, int] = field(default_factory=dict)  # unfiltered count per group
    recounted: bool = False
    relisted: dict[int, dict[int, Task]] = field(default_factory=dict)  # finished states listed in full later
    refreshed: bool = False  # every finished state listed in full this round
    shown: dict[int, Task | None] = field(default_factory=dict)  # ShowTask answers (None: gone)


@dataclass(frozen=True, slots=True)
class Serve:
    view: View
    records: dict[int, Task]  # the served tasks (in scope) by id


@dataclass(frozen=True, slots=True)
class Fetch:
    recount: bool = False  # the unfiltered count again
    heads: frozenset[Key] = frozenset()  # the next page of each
    whole: frozenset[int] = frozenset()  # these finished states in full
    refresh: bool = False  # `whole` is every finished state: it counts as the periodic refresh
    show: frozenset[int] = frozenset()  # ShowTask of each


@dataclass(frozen=True, slots=True)
class Again:
    reason: str


@dataclass(frozen=True, slots=True)
class Everything:
    reason: str


Decision = Serve | Fetch | Again | Everything


def reconcile(view: View, rnd: Round, scope: Scope, now: float) -> Decision:
    """The next step of a round (`now`: the listing's Unix time, for the refresh time of a served view)."""
    where, tasks = _placed(rnd, scope)
    finished = tuple(view.finished.values())
    new = [tid for tid in where.keys() - view.live.keys() if all(tid not in f for f in finished)]
    if scope.checked:
        if new and not rnd.recounted:
            return Fetch(recount=True)
        if not _adds_up(rnd, scope):
            if not scope.last and scope.status6 and (_listed_twice(rnd.pages) or new):
                return Again("tasks moved while the states were listed")
            return Everything("state counts do not add up to the total")
    elif RETRYING in scope.states:
        return Everything("retrying tasks cannot be listed by state")
    departed = view.live.keys() - where.keys() - rnd.shown.keys()
    partial = [s for s in scope.finished if not _listed_whole(s, rnd)]
    if partial and departed and (not scope.show or len(departed) > _follow_max(rnd, scope)):
        # Listing the finished states again is cheaper than following each task (or the only way).
        return Fetch(whole=frozenset(scope.finished), refresh=True)
    # With every state listed and the counts checked, a live task not listed is gone or out of scope.
    follow = _listed_twice(rnd.pages) | (set() if not partial and scope.checked else departed)
    follow -= rnd.shown.keys()
    if follow:
        if scope.show:
            return Fetch(show=frozenset(follow))
        return Again("ShowTask refused") if not scope.last else Everything("ShowTask refused")
    step = _finished_step(view, rnd, scope, where, tasks, partial)
    if step is not None:
        return step
    return _serve(view, rnd, scope, where, tasks, now)


def _finished_step(view: View, rnd: Round, scope: Scope, where: dict[int, int], tasks: dict[int, Task],
                   partial: list[int]) -> Fetch | None:
    """More to read about the finished states, or None when each is exact."""
    heads = frozenset(k for s in partial for k in scope.keys(s) if _arrivals_only(view, rnd, scope, k))
    if heads:
        return Fetch(heads=heads)
    unexplained = frozenset(s for s in partial if _kept_count(view, s, where, rnd) != _count(rnd, scope, s))
    if unexplained:
        return Fetch(whole=unexplained)
    # The tasks a state listed again lost unseen: one may have gone to another finished state
    # (restarted, finished again), whose count the arrival hid a deletion from.
    vanished: set[int] = set()
    for s, found in rnd.relisted.items():
        vanished |= view.finished.get(s, {}).keys() - found.keys() - where.keys()
    vanished -= rnd.shown.keys()
    if not vanished:
        return None
    if scope.show:
        return Fetch(show=frozenset(vanished))
    rest = frozenset(s for s in partial if s not in rnd.relisted)
    return Fetch(whole=rest) if rest else None  # ShowTask refused: the others listed in full too


def _serve(view: View, rnd: Round, scope: Scope, where: dict[int, int], tasks: dict[int, Task],
           now: float) -> Serve | Everything:
    by_state: dict[int, dict[int, Task]] = {s: {} for s in scope.placed()}
    for tid, s in where.items():
        by_state[s][tid] = tasks[tid]
    for s in scope.finished:
        if not _listed_whole(s, rnd):
            by_state[s] = _kept(view, s, where, tasks, rnd)
    broken = _broken(view, rnd, scope, where, by_state)
    if broken:
        return Everything(f"invariant broken: {broken}")
    live = {tid: t for s in LIVE_STATES for tid, t in by_state[s].items()}
    finished = {s: by_state[s] for s in scope.finished}
    refreshed = rnd.refreshed or bool(scope.finished) and all(s in rnd.whole for s in scope.finished)
    seen = where.keys() | rnd.shown.keys()
    sums = {s: _sums(view, s, by_state.get(s, {}), None if _listed_whole(s, rnd) else seen) for s in scope.states}
    served: dict[int, Task] = {}
    for s in scope.states:
        served.update(by_state.get(s, {}))
    return Serve(View(live, finished, sums, now if refreshed else view.listed_at), served)


def _broken(view: View, rnd: Round, scope: Scope, where: dict[int, int],
            by_state: dict[int, dict[int, Task]]) -> str:
    """The first invariant the new view breaks, or ""."""
    if scope.checked and not _adds_up(rnd, scope):
        return "state counts do not add up to the total"
    for s in scope.finished:
        if not _listed_whole(s, rnd) and len(by_state[s]) != _count(rnd, scope, s):
            return f"{len(by_state[s])} tasks kept in state {STATUS_NAMES[s]}, its count is {_count(rnd, scope, s)}"
    partial = any(not _listed_whole(s, rnd) for s in scope.finished)
    unplaced = view.live.keys() - where.keys() - rnd.shown.keys()
    if unplaced and (partial or not scope.checked):
        return f"{len(unplaced)} previously live tasks neither listed nor followed"
    return ""


# --- what the round saw ------------------------------------------------------------------------

def _placed(rnd: Round, scope: Scope) -> tuple[dict[int, int], dict[int, Task]]:
    """Where each task seen this round is now (task id -> state), and its latest record.

    A state listed again in full replaces what its first batch saw of it, except that a task
    seen in another state this round stays there (it moved meanwhile); ShowTask has the last
    word: a task it found in no state placed (or out of the target's groups) is placed nowhere.
    """
    where: dict[int, int] = {}
    tasks: dict[int, Task] = {}
    for s, found in rnd.pages.items():
        if s in rnd.relisted:
            continue
        for tid, t in found.items():
            where[tid], tasks[tid] = s, t
    for s, found in rnd.relisted.items():
        for tid, t in found.items():
            if where.setdefault(tid, s) == s:
                tasks[tid] = t
    tracked = set(scope.placed())
    groups = {g for g in scope.groups if g is not None}
    for tid, shown in rnd.shown.items():
        where.pop(tid, None)
        if shown is not None and shown.status in tracked and (not groups or shown.group_id in groups):
            where[tid], tasks[tid] = shown.status, shown
    return where, tasks


def _listed_twice(pages: Mapping[int, Tasks]) -> set[int]:
    """Tasks listed in more than one state this round: they moved while the states were listed."""
    seen: set[int] = set()
    twice: set[int] = set()
    for found in pages.values():
        twice |= seen & found.keys()
        seen |= found.keys()
    return twice


def _adds_up(rnd: Round, scope: Scope) -> bool:
    """Per group, the first batch's state counts, less the tasks they counted twice, equal the total."""
    twice = _listed_twice(rnd.pages)
    for g in scope.groups:
        extra = 0
        for tid in twice:
            records = [found[tid] for found in rnd.pages.values() if tid in found]
            if g is None or records[0].group_id == g:
                extra += len(records) - 1
        listed = sum(n for (_, gg), n in rnd.counts.items() if gg == g)
        if listed - extra != rnd.totals.get(g):
            return False
    return True


def _listed_whole(s: int, rnd: Round) -> bool:
    return s in rnd.whole or s in rnd.relisted


def _count(rnd: Round, scope: Scope, s: int) -> int:
    return sum(rnd.counts.get(k, 0) for k in scope.keys(s))


def _follow_max(rnd: Round, scope: Scope) -> int:
    """Tasks worth following one by one before listing the finished states in full is cheaper."""
    return max(16, sum(_count(rnd, scope, s) for s in scope.finished) // scope.limit // 2)


def _arrivals_only(view: View, rnd: Round, scope: Scope, key: Key) -> bool:
    """Whether the pages read of a finished state's head hold no task it had in the view, while
    more pages are there: the next ones may hold more arrivals (the list is newest first)."""
    s, g = key
    read = rnd.heads.get(key, 0)
    if not read or read * scope.limit >= rnd.counts.get(key, 0):
        return False
    before = view.finished.get(s, {})
    return not any(tid in before for tid, t in rnd.pages.get(s, {}).items() if g is None or t.group_id == g)


def _kept(view: View, s: int, where: dict[int, int], tasks: dict[int, Task], rnd: Round) -> dict[int, Task]:
    """Finished state `s` from the view, moved by what was seen this round: its tasks not seen
    anywhere this round (nor followed), and every task placed in it now."""
    kept = dict(view.finished.get(s, {}))
    for tid in _touched(kept, where, rnd):
        del kept[tid]
    kept.update((tid, tasks[tid]) for tid, st in where.items() if st == s)
    return kept


def _kept_count(view: View, s: int, where: dict[int, int], rnd: Round) -> int:
    """len(_kept(...)), without building it."""
    before = view.finished.get(s, {})
    return len(before) - len(_touched(before, where, rnd)) + sum(1 for st in where.values() if st == s)


def _touched(before: Tasks, where: dict[int, int], rnd: Round) -> set[int]:
    """The tasks of `before` seen this round (listed or followed): what they are now is what was seen."""
    return {tid for tid in where if tid in before} | {tid for tid in rnd.shown if tid in before}


def _sums(view: View, s: int, now: Tasks, seen: set[int] | None = None) -> tuple[int, Totals]:
    """(count, sums) of state `s`: the view's moved by the records that left and came, when all are
    integers (so the result is exact); else summed again. `seen`: the only tasks that can differ
    from the view's (None: any)."""
    before = view.finished.get(s)
    cached = view.sums.get(s)
    if before is not None and cached is not None:
        ids = seen if seen is not None else before.keys() | now.keys()
        out = [before[tid] for tid in ids if tid in before and now.get(tid) is not before[tid]]
        came = [now[tid] for tid in ids if tid in now and before.get(tid) is not now[tid]]
        delta_out, delta_in = state_totals(out), state_totals(came)
        if all(type(v) is int for v in (*cached[1], *delta_out, *delta_in)):
            return len(now), tuple(t - o + c for t, o, c in zip(cached[1], delta_out, delta_in))
    return len(now), state_totals(list(now.values()))


def view_of(tasks: Iterable[Task], scope: Scope, now: float) -> View:
    """The view after a listing of every task (`Everything`), whose tasks are those of the scope's
    groups: live tasks are followed in or out of scope, finished ones kept per state in scope."""
    by_state: dict[int | None, dict[int, Task]] = {}
    for t in tasks:
        by_state.setdefault(t.status, {})[t.id] = t
    live = {tid: t for s in LIVE_STATES for tid, t in by_state.get(s, {}).items()}
    finished = {s: by_state.get(s, {}) for s in scope.finished}
    return View(live, finished, {s: _sums(View(), s, by_state.get(s, {})) for s in scope.states}, now)
