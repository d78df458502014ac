"""Every OMS project of an account: IAM's project list, sorted into targets and the rest.

A `Discoverer` serves one discovery entry. Every `refresh_interval` it asks IAM for the
account's projects (`GET /v3/auth/projects`, signed with the entry's AK/SK or with a token
scoped to the account) and sorts each one into a state:

- `disabled`: IAM says `enabled: false`;
- `excluded`: not a region project (`MOS`), or left out by the entry's regions / projects lists;
- `not_offered`: its region has no OMS endpoint (built in, or in the entry's `endpoints`), or
  OMS answers 404 `APIGW.0101` there;
- `forbidden`: OMS answers 403 there (no OMS permission in that project);
- `scraped`: a target, named after the project, with the entry's credentials and labels.

Each candidate is asked once per refresh (ListTasks, limit 1) to tell the last three apart;
a probe that fails otherwise (5xx, timeout) keeps the project's last state, or makes it a
target whose failure `oms_up` then shows. When IAM fails, or lists nothing after it listed
projects, the last good list stays and the failure is counted.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec
from yarl import URL

from oms_exporter.auth import Auth, account_auth
from oms_exporter.clock import Clock
from oms_exporter.errors import (
    AuthFailed,
    BadPayload,
    Incomplete,
    OmsError,
    RequestRejected,
    ServerError,
    Throttled,
)
from oms_exporter.http import Http, error_code
from oms_exporter.settings import PROJECT_ID_PATTERN, DiscoveryEntry, Target

log = logging.getLogger(__name__)

STATES = ("scraped", "forbidden", "not_offered", "disabled", "excluded")
NOT_PUBLISHED = "APIGW.0101"  # the API gateway's answer to an API a region does not publish
_REGION = re.compile(r"[a-z]{2}-[a-z]+-[0-9]{1,3}")
_PROJECT_ID = re.compile(PROJECT_ID_PATTERN)


class _Project(msgspec.Struct):
    """An AuthProjectResult of KeystoneListAuthProjects (the fields read)."""

    id: str
    name: str
    enabled: bool = True


class _Projects(msgspec.Struct):
    projects: list[_Project]


@dataclass(frozen=True, slots=True)
class Found:
    """A project IAM listed, and what became of it."""

    id: str
    name: str
    region: str
    state: str


class Observer(Protocol):
    def discovery_refreshed(self, entry: str, counts: Mapping[str, int] | None, reason: str | None,
                            at: float) -> None: ...


class Discoverer:
    """One discovery entry: its last good project list, refreshed by `run`."""

    TIMEOUT = 30.0  # seconds IAM's project list may take
    PROBE_TIMEOUT = 10.0  # seconds one project's probe may take (a hung project costs no more)
    PROBES = 8  # projects asked at once
    AUTH_BACKOFF, AUTH_BACKOFF_MAX = 30.0, 900.0  # after IAM refused the credentials: as a target's

    def __init__(self, entry: DiscoveryEntry, http: Http, clock: Clock, observer: Observer,
                 auth_of: Callable[[Target], Auth], on_change: Callable[[], None]) -> None:
        self.entry = entry
        self._http = http
        self._clock = clock
        self._observer = observer
        self._auth_of = auth_of  # a target's credentials, shared with its client
        self._on_change = on_change
        self._account = account_auth(entry, http, clock)
        self.found: list[Found] = []
        self.targets: list[Target] = []
        self.refreshed = asyncio.Event()  # set once a refresh ended (well or not)
        self._failing: str | None = None  # the reason of the failing refreshes, while they fail
        self._auth_failures = 0  # refreshes refused by IAM in a row
        self._refused: set[str] = set()  # ids of projects a target cannot be made of (warned once)

    def adopt(self, before: Discoverer) -> None:
        """Start from the list of the same entry (name, account) before a reload, until the first
        refresh: its projects sorted again by this entry's lists, its targets made by this entry."""
        found = []
        for f in before.found:
            state = f.state
            if state != "disabled":
                now = self._state(_Project(f.id, f.name), f.region)
                # A candidate still: what OMS answered last time; newly one: a target until probed.
                state = now if now != "scraped" else state if state != "excluded" else "scraped"
            found.append(Found(f.id, f.name, f.region, state))
        self.found = found
        self.targets = self._targets(found)

    def same_account(self, other: DiscoveryEntry) -> bool:
        """Whether `other` lists the same account's projects (its list can stand in for this one's)."""
        e = self.entry
        return (e.name, e.iam_url, e.credentials()) == (other.name, other.iam_url, other.credentials())

    async def run(self) -> None:
        """Refresh now, then every refresh_interval (longer while IAM refuses the credentials), until
        cancelled. A refresh that raises (a bug) is logged and counted; the next one comes as usual."""
        while True:
            started = self._clock.monotonic()
            try:
                await self.refresh()
            except Exception:
                log.exception("discovery failed unexpectedly", extra={"discovery": self.entry.name})
                self._observer.discovery_refreshed(self.entry.name, None, "internal", self._clock.time())
                self.refreshed.set()
            pause = 0.0
            if self._auth_failures:
                pause = min(self.AUTH_BACKOFF * 2 ** (self._auth_failures - 1), self.AUTH_BACKOFF_MAX)
            await self._clock.sleep_until(started + max(self.entry.refresh_interval, pause))

    async def refresh(self) -> None:
        entry, clock = self.entry, self._clock
        deadline = clock.monotonic() + self.TIMEOUT
        try:
            async with clock.timeout_at(deadline):
                projects = await self._list(deadline)
            if not projects and self.found:
                raise Incomplete("IAM listed no project, after it listed some: the last list stays")
            found = await self._sort(projects)
        except (OmsError, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, OmsError) else "timeout"
            self._auth_failures = self._auth_failures + 1 if isinstance(exc, AuthFailed) else 0
            self._observer.discovery_refreshed(entry.name, None, reason, clock.time())
            if self._failing != reason:
                log.warning("discovery failed, the last project list stays", extra={
                    "discovery": entry.name, "reason": reason, "error": str(exc) or "timed out"})
            self._failing = reason
        else:
            if self._failing is not None:
                log.info("discovery recovered", extra={"discovery": entry.name})
            self._failing, self._auth_failures = None, 0
            self._update(found)
        finally:
            self.refreshed.set()

    def _update(self, found: list[Found]) -> None:
        counts = {state: sum(1 for f in found if f.state == state) for state in STATES}
        self._observer.discovery_refreshed(self.entry.name, counts, None, self._clock.time())
        targets = self._targets(found)
        changed = targets != self.targets  # a project added or gone, or renamed (same id, new name)
        if changed or not self.found:
            log.info("discovered", extra={"discovery": self.entry.name, **counts,
                                          "targets": ",".join(t.name for t in targets)})
        self.found, self.targets = found, targets
        if changed:
            self._on_change()

    def _targets(self, found: Sequence[Found]) -> list[Target]:
        return [self._target(f) for f in found if f.state == "scraped"]

    async def _list(self, deadline: float) -> list[_Project]:
        """IAM's projects of the account."""
        url = URL(self.entry.iam_url + "/v3/auth/projects")
        headers = await self._account.headers("GET", url, deadline)
        answer = await self._http.request("GET", url, headers=headers, deadline=deadline)
        if answer.status == 401 and await self._account.unauthorized(headers):  # a token revoked: renew once
            headers = await self._account.headers("GET", url, deadline)
            answer = await self._http.request("GET", url, headers=headers, deadline=deadline)
        if answer.status in (401, 403):
            raise AuthFailed(f"IAM refused the credentials of discovery {self.entry.name} ({answer.describe()})")
        if answer.status == 429:
            raise Throttled(f"IAM throttled the project list ({answer.describe()})")
        if answer.status >= 500:
            raise ServerError(f"IAM failed ({answer.describe()})")
        if answer.status != 200:
            raise RequestRejected(f"IAM rejected the project list ({answer.describe()})", answer.status,
                                  error_code(answer.body))
        try:
            return msgspec.json.decode(answer.body, type=_Projects).projects
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            raise BadPayload("IAM's project list does not have the KeystoneListAuthProjects shape") from None

    async def _sort(self, projects: Sequence[_Project]) -> list[Found]:
        """Each project with its state; the candidates asked of OMS, PROBES at once, each within
        PROBE_TIMEOUT (a project that never answers costs that, not the refresh)."""
        before = {f.id: f.state for f in self.found}
        slots = asyncio.Semaphore(self.PROBES)

        async def one(p: _Project) -> Found:
            region = p.name.split("_")[0]
            state = self._state(p, region)
            if state == "scraped":
                async with slots:
                    state = await self._probe(p, region, before.get(p.id))
            return Found(p.id, p.name, region, state)

        found = await asyncio.gather(*(one(p) for p in projects))
        return sorted(found, key=lambda f: f.name)

    def _state(self, p: _Project, region: str) -> str:
        """What the entry makes of a project before OMS is asked ("scraped": a candidate)."""
        e = self.entry
        if not p.enabled:
            return "disabled"
        if not _REGION.fullmatch(region) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", p.name):
            return "excluded"  # MOS, and whatever is not a region project
        if not _PROJECT_ID.fullmatch(p.id):
            if p.id not in self._refused:
                self._refused.add(p.id)
                log.warning("a project id that is no OMS project id: not scraped", extra={
                    "discovery": e.name, "project": p.name, "project_id": p.id[:80]})
            return "excluded"
        if (e.regions is not None and region not in e.regions) or region in e.exclude_regions:
            return "excluded"
        if e.projects is not None and not any(re.fullmatch(x, p.name) for x in e.projects):
            return "excluded"
        if any(re.fullmatch(x, p.name) for x in e.exclude_projects):
            return "excluded"
        return "scraped" if e.oms_endpoint(region) is not None else "not_offered"

    async def _probe(self, p: _Project, region: str, last: str | None) -> str:
        """Whether OMS answers in the project: scraped, forbidden (403) or not_offered (APIGW.0101).
        An answer that says neither (429, 5xx, none in time) keeps what the project was, if it was
        one of those, or makes it a target whose failure `oms_up` then shows."""
        kept = last if last in ("scraped", "forbidden", "not_offered") else "scraped"
        target = self._target(Found(p.id, p.name, region, "scraped"))
        url = URL(f"{target.oms_endpoint}/v2/{p.id}/tasks").with_query(limit="1", offset="0")
        deadline = self._clock.monotonic() + self.PROBE_TIMEOUT
        try:
            async with self._clock.timeout_at(deadline):
                headers = await self._auth_of(target).headers("GET", url, deadline)
                # Not reported per project: a probed project need not become a target.
                answer = await self._http.request("GET", url, headers=headers, deadline=deadline)
        except (OmsError, TimeoutError) as exc:
            log.debug("project probe failed", extra={"discovery": self.entry.name, "project": p.name,
                                                     "reason": exc.reason if isinstance(exc, OmsError) else "timeout"})
            return kept
        if answer.status == 403:
            return "forbidden"
        if answer.status == 404 and error_code(answer.body) == NOT_PUBLISHED:
            return "not_offered"
        return kept if answer.status == 429 or answer.status >= 500 else "scraped"

    def _target(self, f: Found) -> Target:
        e = self.entry
        endpoint = e.oms_endpoint(f.region)
        assert endpoint is not None
        return Target.model_validate({
            **e.credentials(), "iam_endpoint": e.iam_url, "name": e.target_name(f.name), "project_id": f.id,
            "region": f.region, "endpoint": endpoint, "project_name": f.name, "labels": e.labels,
            "collectors": e.collectors})
