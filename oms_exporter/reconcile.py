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
   (a deletion), the gaps are located in the order OMS last served the state (`View.order`):
   a record read at offset k that the kept order holds at index j says that j - k tasks
   before it are gone (arrivals read on its first pages counted), so single records read
   at chosen offsets (`Fetch.probes`) bisect the list down to the gaps, in O(d log n)
   requests for d gaps in n tasks; the tasks found in them are followed with ShowTask,
   which confirms each is gone. A record that is not where the kept order says, a count
   the kept order cannot explain, or no kept order lists the state in full instead
   (`Fetch.fallbacks` says why), and the tasks it lost unseen are followed.

Every finished state is listed in full at least every refresh interval (`Scope.refresh`); a
listing in full records the order its pages served, and a served view keeps it, moved by the
tasks that went (dropped) and came (put where the pages read them; where that was not read,
the order is not known until the next listing in full). Before serving, the invariants are
checked in code (`_broken`): per scope the counts add up to the total, each kept finished
state holds as many tasks as its count, and every previously live task is placed or known
gone; a view that breaks one is never served. The kept order only says where to look:
what it places is confirmed (a gap by ShowTask, an order by the pages read) before it is
used, so exactness never rests on OMS keeping its order.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from itertools import filterfalse, islice, pairwise
from operator import itemgetter
from typing import NamedTuple, TypeAlias

from oms_exporter.model import FINISHED_STATUSES, STATUS_NAMES, Task, Totals, state_totals

RETRYING = 6
LIVE_STATES = tuple(s for s in STATUS_NAMES if s not in FINISHED_STATUSES)
Key = tuple[int, str | None]  # (state, group_id filter)
Tasks = Mapping[int, Task]
Order: TypeAlias = "array[int]"  # task ids ('q'), in the order OMS served a finished list
# Why a finished state that lost tasks unseen was listed again in full instead of probed:
# no_order: none kept (listed with every task, a listing whose order was not sure, an arrival
# whose place was not read); contradicted: a record read is not where the kept order says (or a
# task placed in a gap is still there); unexplained: more tasks than kept and seen arriving, or
# the count changed while probing; cheaper: a listing in full costs fewer requests; no_showtask:
# OMS refuses ShowTask, which confirms what the probes find.
FALLBACK_REASONS = ("no_order", "contradicted", "unexplained", "cheaper", "no_showtask")
MAX_PROBE_STEPS = 8  # probe steps of one round before the state is listed in full instead


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
    order: Mapping[Key, Order] = field(default_factory=dict)  # finished list -> its ids as OMS serves them


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
    at: dict[Key, dict[int, int]] = field(default_factory=dict)  # finished list -> offset -> task id read there
    orders: dict[Key, Order] = field(default_factory=dict)  # finished lists listed in full: their order, when sure
    unsure: set[Key] = field(default_factory=set)  # a page read of it could not be placed (count changed, unreadable)
    probed: int = 0  # Fetch steps with probes so far


class Probe(NamedTuple):
    """A page of a finished list to read: `limit` records from `offset`."""

    key: Key
    offset: int
    limit: int


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
    probes: frozenset[Probe] = frozenset()  # pages of finished lists, to place their gaps
    fallbacks: tuple[tuple[int, str], ...] = ()  # (state in `whole`, why it is not probed instead)


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
            return _early(Fetch(recount=True), view, rnd, scope, where, tasks)
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
            return _early(Fetch(show=frozenset(follow)), view, rnd, scope, where, tasks)
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
    unexplained = [s for s in partial if _kept_count(view, s, where, rnd) != _count(rnd, scope, s)]
    if unexplained:
        return _locate_all(view, rnd, scope, where, tasks, unexplained)
    # A count explained by the arrivals read is only as good as the order they were read in: where the
    # first pages do not hold what the kept order, moved by them, says, OMS did not serve the state
    # newest first, an arrival may lie beyond the pages read and hide a deletion: list it in full.
    contradicted = [s for s in partial
                    if any(_head_contradicts(view, rnd, scope, k, where, tasks) for k in scope.keys(s))]
    if contradicted:
        return Fetch(whole=frozenset(contradicted), fallbacks=tuple((s, "contradicted") for s in contradicted))
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
    order = _orders(view, rnd, scope, where, tasks, by_state)
    return Serve(View(live, finished, sums, now if refreshed else view.listed_at, order), served)


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


# --- where tasks went unseen: the kept order ---------------------------------------------------

class _Found(NamedTuple):
    probes: set[Probe]  # to read next
    gone: set[int]  # tasks the gaps hold: to follow


def _locate_all(view: View, rnd: Round, scope: Scope, where: dict[int, int], tasks: dict[int, Task],
                states: list[int]) -> Fetch:
    """For each finished state whose count says it lost tasks unseen: the probes that place its gaps in
    its kept order, the tasks found in them (followed: ShowTask confirms each is gone), or a listing
    in full (a fallback, and why)."""
    probes: set[Probe] = set()
    show: set[int] = set()
    fallbacks: list[tuple[int, str]] = []
    for s in states:
        found = _locate_state(view, rnd, scope, where, tasks, s)
        if isinstance(found, str):
            fallbacks.append((s, found))
        else:
            probes |= found.probes
            show |= found.gone
    return Fetch(whole=frozenset(s for s, _ in fallbacks), show=frozenset(show), probes=frozenset(probes),
                 fallbacks=tuple(fallbacks))


def _early(step: Fetch, view: View, rnd: Round, scope: Scope, where: dict[int, int], tasks: dict[int, Task]) -> Fetch:
    """`step`, with the probes (and the tasks they found in gaps, to follow) of each finished state that
    lost tasks unseen whatever the steps before the finished ones find (it keeps more tasks than its
    count, and the tasks still to follow can only add to it): read alongside those steps, locating
    costs no round trips of its own. What they read is used once those steps are done."""
    probes: set[Probe] = set()
    show: set[int] = set()
    for s in scope.finished:
        if (_listed_whole(s, rnd) or _kept_count(view, s, where, rnd) <= _count(rnd, scope, s)
                or any(_arrivals_only(view, rnd, scope, k) for k in scope.keys(s))):
            continue
        found = _locate_state(view, rnd, scope, where, tasks, s)
        if not isinstance(found, str):
            probes |= found.probes
            show |= found.gone
    return replace(step, probes=frozenset(probes), show=step.show | show) if probes or show else step


def _locate_state(view: View, rnd: Round, scope: Scope, where: dict[int, int], tasks: dict[int, Task],
                  s: int) -> _Found | str:
    """What to read or follow next to place the gaps of state `s`, or why it is listed in full instead."""
    if not scope.show:
        return "no_showtask"
    if _kept_count(view, s, where, rnd) < _count(rnd, scope, s) or any(k in rnd.unsure for k in scope.keys(s)):
        return "unexplained"
    if rnd.probed >= MAX_PROBE_STEPS:
        return "cheaper"
    found = _Found(set(), set())
    for key in scope.keys(s):
        one = _locate(view, rnd, scope, where, tasks, key)
        if isinstance(one, str):
            return one
        found.probes.update(one.probes)
        found.gone.update(one.gone)
    if found.gone & rnd.shown.keys():
        return "contradicted"  # a task placed in a gap is still in the state, ShowTask says
    if not found.probes and not found.gone:
        return "unexplained"
    return found


def _locate(view: View, rnd: Round, scope: Scope, where: dict[int, int], tasks: dict[int, Task],
            key: Key) -> _Found | str:
    """Place the gaps of one finished list (state, group) in its kept order, or say why not."""
    order = view.order.get(key)
    if order is None:
        return "no_order"
    kept = view.finished.get(key[0], {})
    gone = _gone(kept, key, where, tasks, rnd)
    arrivals = _arrivals(kept, key, where, tasks)
    n = rnd.counts.get(key, 0)
    d = len(order) - len(gone) + len(arrivals) - n  # tasks gone unseen
    if d < 0:
        return "unexplained"
    if not d:
        return _Found(set(), set())
    at = rnd.at.get(key, {})
    placed = sorted(k for k, tid in at.items() if tid in arrivals)
    if len(placed) < len(arrivals):
        return "no_order"  # an arrival not read on the pages: where it went in the order is not known
    pages = -(-n // scope.limit)
    if d * (pages.bit_length() + 1) >= pages:
        return "cheaper"
    seq = array("q", filterfalse(gone.__contains__, order)) if gone else order
    points = _points(seq, at, arrivals, placed, d)
    if points is None:
        return "contradicted"
    points.append((n, len(seq), d))
    return _gaps(seq, points, placed, n, scope.limit, key)


def _member(task: Task, g: str | None) -> bool:
    return g is None or task.group_id == g


def _gone(kept: Tasks, key: Key, where: dict[int, int], tasks: dict[int, Task], rnd: Round) -> set[int]:
    """The tasks of a kept finished list seen elsewhere this round (or followed out of it)."""
    s, g = key
    return {tid for tid in _touched(kept, where, rnd)
            if _member(kept[tid], g) and not (where.get(tid) == s and _member(tasks[tid], g))}


def _arrivals(kept: Tasks, key: Key, where: dict[int, int], tasks: dict[int, Task]) -> set[int]:
    """The tasks placed in a finished list this round that its kept order does not hold."""
    s, g = key
    return {tid for tid, st in where.items()
            if st == s and _member(tasks[tid], g) and not (tid in kept and _member(kept[tid], g))}


def _points(seq: Order, at: Mapping[int, int], arrivals: set[int], placed: list[int],
            d: int) -> list[tuple[int, int, int]] | None:
    """(offset, index in `seq`, tasks gone before it) of each kept task read, in offset order, after the
    list's start; None when one is not where `seq` can hold it (at most `d` places further on) or the
    gone count falls: the order was not kept."""
    points = [(-1, -1, 0)]
    ids: set[int] = set()
    for k, tid in sorted(at.items()):
        if tid in ids:
            return None
        ids.add(tid)
        if tid in arrivals:
            continue
        base = k - bisect_left(placed, k)  # its index in `seq` if nothing before it were gone
        window = seq[max(base, 0):base + d + 1]
        if tid not in window:
            return None
        j = max(base, 0) + window.index(tid)
        if j - base < points[-1][2] or j <= points[-1][1]:
            return None
        points.append((k, j, j - base))
    return points


def _gaps(seq: Order, points: list[tuple[int, int, int]], placed: list[int], n: int, limit: int,
          key: Key) -> _Found | str:
    """Between two neighbouring points whose gone counts differ, the tasks of `seq` between them are
    gone when every offset between them was read; else the probes that narrow it down."""
    found = _Found(set(), set())
    for (k1, j1, g1), (k2, j2, g2) in pairwise(points):
        if g2 < g1:
            return "contradicted"
        if g2 == g1:
            continue
        unread = k2 - k1 - 1 - (bisect_left(placed, k2) - bisect_left(placed, k1 + 1))
        if unread:
            found.probes.update(_split(k1 + 1, k2, n, limit, key))
        else:
            found.gone.update(seq[j1 + 1:j2])
    return found


def _split(lo: int, hi: int, n: int, limit: int, key: Key) -> list[Probe]:
    """Probes into offsets [lo, hi) of a list of `n`, where gaps are: a page when it is one; the last page
    when the range runs to the end (old tasks are the ones deleted, and the stand-in and the API as seen
    list them last); up to four pages; else three single records that split it in four."""
    width = hi - lo
    if width <= limit:
        return [Probe(key, lo, width)]
    if hi == n:
        return [Probe(key, n - limit, limit)]
    if width <= 4 * limit:
        return [Probe(key, o, min(limit, hi - o)) for o in range(lo, hi, limit)]
    return [Probe(key, lo + width * i // 4, 1) for i in (1, 2, 3)]


def _orders(view: View, rnd: Round, scope: Scope, where: dict[int, int], tasks: dict[int, Task],
            by_state: dict[int, dict[int, Task]]) -> dict[Key, Order]:
    """The order of each finished list served, where known: as its listing in full served it this round,
    or the kept one moved by what this round saw."""
    out: dict[Key, Order] = {}
    for s in scope.finished:
        for key in scope.keys(s):
            if _listed_whole(s, rnd):
                order = rnd.orders.get(key)
                if order is not None and _holds(order, by_state[s], key[1]):
                    out[key] = order
            else:
                moved = _moved_order(view, rnd, key, where, tasks)
                if moved is not None and len(moved) == _members(by_state[s], key[1]):
                    out[key] = moved
    return out


def _members(served: Tasks, g: str | None) -> int:
    return len(served) if g is None else sum(1 for t in served.values() if t.group_id == g)


def _holds(order: Order, served: Tasks, g: str | None) -> bool:
    """Whether `order` lists exactly the served tasks of group `g` (None: all)."""
    return len(order) == _members(served, g) and all(map(served.__contains__, order))


def _head_contradicts(view: View, rnd: Round, scope: Scope, key: Key, where: dict[int, int],
                      tasks: dict[int, Task]) -> bool:
    """Whether the first pages read of a finished list hold, at some offset, another task than its kept
    order (without the tasks that went, with the arrivals where they were read) puts there."""
    order = view.order.get(key)
    reach = rnd.heads.get(key, 0) * scope.limit
    if order is None or not reach or key in rnd.unsure:
        return False
    kept = view.finished.get(key[0], {})
    gone = _gone(kept, key, where, tasks, rnd)
    arrivals = _arrivals(kept, key, where, tasks)
    at = {k: tid for k, tid in rnd.at.get(key, {}).items() if k < reach}
    moved = list(islice(filterfalse(gone.__contains__, order), reach))  # the head is all it compares
    for k, tid in sorted((k, tid) for k, tid in at.items() if tid in arrivals):
        moved.insert(k, tid)
    if any(k >= len(moved) or moved[k] != tid for k, tid in at.items()):
        return True
    # Newest first, a task the view never had (created since) comes before every task it kept.
    first_kept = min((k for k, tid in at.items() if tid not in arrivals), default=reach)
    return any(k > first_kept and tid in arrivals and tid not in view.live
               and all(tid not in f for f in view.finished.values()) for k, tid in at.items())


def _moved_order(view: View, rnd: Round, key: Key, where: dict[int, int], tasks: dict[int, Task]) -> Order | None:
    """The kept order of a finished list without the tasks that went, with those that came where the pages
    read them; None when one came where no page was read, or a page read disagrees with it."""
    order = view.order.get(key)
    if order is None:
        return None
    kept = view.finished.get(key[0], {})
    gone = _gone(kept, key, where, tasks, rnd)
    arrivals = _arrivals(kept, key, where, tasks)
    at = rnd.at.get(key, {})
    placed = sorted(((k, tid) for k, tid in at.items() if tid in arrivals), key=itemgetter(0))
    if len(placed) != len(arrivals):
        return None
    moved = order
    if gone or placed:
        moved = array("q", filterfalse(gone.__contains__, order)) if gone else array("q", order)
        for k, tid in placed:
            moved.insert(k, tid)
    if any(k >= len(moved) or moved[k] != tid for k, tid in at.items()):
        return None
    return moved


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


def seed_of(rnd: Round, scope: Scope, now: float) -> View:
    """The view a round that listed the finished states in full leaves when its counts did not add up
    (tasks moved while it listed, as they do while a large account is listed for long): never served,
    but checked by the rounds after it as a served view is. A task it listed in two states is also
    taken as live, so that the next round follows it to where it is (and out of where it is not);
    an order is kept where it lists exactly the state's tasks."""
    twice = _listed_twice(rnd.pages)
    live = {tid: t for s in scope.live for tid, t in rnd.pages.get(s, {}).items()}
    for found in rnd.pages.values():
        live.update((tid, t) for tid, t in found.items() if tid in twice and tid not in live)
    finished = {s: dict(rnd.pages.get(s, {})) for s in scope.finished}
    order = {key: o for key, o in rnd.orders.items() if key[0] in finished and _holds(o, finished[key[0]], key[1])}
    return View(live, finished, {s: _sums(View(), s, rnd.pages.get(s, {})) for s in scope.states}, now, order)
