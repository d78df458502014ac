"""The family machinery, the families of a project as a whole, and the exporter's own metrics.

A `Family` declares one OMS metric family: its name, help, labels, and how its series are
read from a project's listing (a project family) or from one record (a record family of a
`Kind`). Each API area declares its own families beside its lister (`tasks.py`,
`groups.py`, `syncs.py`); `catalog.families` puts them in output order after the project
families here. The encoder (`exposition.py`), the reference collector (`collector.py`),
the README's metrics table and the tests all read that one table. `SelfMetrics` holds the
counters of the exporter's own work (requests, failures, listings, encodes).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

from oms_exporter import __version__
from oms_exporter.reconcile import FALLBACK_REASONS

if TYPE_CHECKING:
    from oms_exporter.listing import Listing

Series = Iterable[tuple[Sequence[str], float]]  # (label values after the owner's ids, value)


@dataclass(frozen=True, slots=True)
class Kind:
    """What a per-record family reads one instance of: its records are keyed by `id_label`."""

    name: str
    id_label: str


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family (all gauges): name, help, labels, and how its series are read.

    A project family (`kind` None) reads a `Listing`: `series(listing)`. A record family
    reads the record `fields` of one record of `kind`: `series(read(record))`, where `read`
    gives the field's value, or a tuple of them for several; its labels start with
    `project_id` and the record's id label. The encoder re-renders a record's family only
    when what it reads changed (`strict`: numbers inside what it reads are compared by how
    they are written too, since 0.0 == -0.0).
    """

    name: str
    help: str
    labels: tuple[str, ...]  # label names after project_id and the record's id label
    kind: Kind | None
    series: Callable[[Any], Series]
    fields: tuple[str, ...] = ()  # the record fields a record family reads
    divisor: float = 1.0  # a gauge of one numeric field: the value divided by this (ms -> s: 1000)
    strict: bool = False
    source: str = ""  # README: where the value comes from
    example: str = ""  # README: a PromQL example

    @property
    def label_names(self) -> tuple[str, ...]:
        return ("project_id", *((self.kind.id_label,) if self.kind else ()), *self.labels)

    @property
    def read(self) -> Callable[[Any], Any]:
        return attrgetter(*self.fields) if self.fields else (lambda listing: listing)

    @property
    def gauge(self) -> bool:
        """A gauge of one numeric record field, no labels of its own (the encoder's fast path)."""
        return (self.kind is not None and len(self.fields) == 1 and not self.labels
                and (self.series, self.divisor) in _GAUGE_SERIES)


def _scalar(v: float | None) -> Series:
    return () if v is None else (((), v),)


def _milliseconds(v: float | None) -> Series:
    # Divided, not multiplied by 0.001: 1764000000123 ms is 1764000000.123 s, not ...0.1230001.
    return () if v is None else (((), v / MS),)


MS = 1000.0  # milliseconds per second
_GAUGE_SERIES = ((_scalar, 1.0), (_milliseconds, MS))  # what the encoder writes as value / divisor


def gauge(name: str, help_text: str, field: str, *, kind: Kind, ms: bool = False,
          source: str = "", example: str = "") -> Family:
    """A record's numeric field (`ms`: milliseconds, served as seconds); no series when the field
    is absent or null (never an invented 0)."""
    return Family(name, help_text, (), kind, _milliseconds if ms else _scalar, (field,), MS if ms else 1.0,
                  source=source, example=example)


def record(name: str, help_text: str, labels: tuple[str, ...], fields: tuple[str, ...],
           series: Callable[[Any], Series], *, kind: Kind, strict: bool = False,
           source: str = "", example: str = "") -> Family:
    return Family(name, help_text, labels, kind, series, fields, strict=strict, source=source, example=example)


def project(name: str, help_text: str, labels: tuple[str, ...], series: Callable[[Listing], Series], *,
            source: str = "", example: str = "") -> Family:
    return Family(name, help_text, labels, None, series, source=source, example=example)


def _clipped(records: Sequence[Any]) -> int:
    """Records with a value cut to the limits (model.py); a record type without `clipped` cuts none."""
    return sum(map(_is_clipped, records)) if records and hasattr(records[0], "clipped") else 0


_is_clipped = attrgetter("clipped")


def _when_up(series: Callable[[Listing], Series]) -> Callable[[Listing], Series]:
    """Series only for a listing that succeeded: a failed one never passes partial data off as whole."""
    return lambda listing: series(listing) if listing.up else ()


def _state_set(names: Mapping[Any, str]) -> Callable[[Any], Series]:
    """One series per state: 1 for the one the record is in; none while it reports no state."""
    def series(status: Any) -> Series:
        return () if status is None else [((name,), 1 if code == status else 0) for code, name in names.items()]
    return series


def _records_per_state(records: Callable[[Listing], Sequence[Any] | None], names: Mapping[Any, str],
                       field: str = "status") -> Callable[[Listing], Series]:
    """One series per state: how many of the records are in it (by their `field`); none when the
    records were not listed."""
    state = attrgetter(field)

    def series(listing: Listing) -> Series:
        found = records(listing)
        if found is None:
            return ()
        n = collections.Counter(map(state, found))
        return [((name,), n[code]) for code, name in names.items()]
    return series


# --- families of a project as a whole ------------------------------------------------------------

HEAD: tuple[Family, ...] = (
    project("oms_up", "1 when the last listing of every task of the project succeeded, 0 otherwise.", (),
            lambda listing: (((), 1 if listing.up else 0),),
            source="per project: 1 when the whole listing succeeded", example="`oms_up == 0`"),
    project("oms_scrape_duration_seconds", "How long listing the project's tasks took.", (),
            lambda listing: (((), listing.duration),),
            source="per project: listing time", example="`max_over_time(oms_scrape_duration_seconds[1h])`"),
    project("oms_listing_in_progress", "1 while a listing of the project goes on past the deadline of the scrape "
            "that started it (a later scrape serves it once it is whole), 0 otherwise.", (),
            lambda listing: (((), 1 if listing.in_progress else 0),),
            source="per project: a listing still running in the background",
            example="`oms_listing_in_progress == 1 and oms_up == 0`"),
)
CLIPPED = project(
    "oms_clipped_records", "Records of the last listing (tasks, task groups, sync tasks) with a value cut "
    "to the exporter's limits: label values to 1024 characters, error messages to 512, bandwidth windows "
    "to 5 per task.", (),
    _when_up(lambda listing: (((), sum(_clipped(p.records or ()) for p in listing.parts.values())),)),
    source="per project: records with a value cut to the exporter's limits (see *Failure modes*)",
    example="`oms_clipped_records > 0`")
LISTED_AT = project(
    "oms_listing_timestamp_seconds",
    "Unix time the listing these series come from was started. With --oms.min-interval a listing "
    "younger than that interval is served again instead of asking OMS: time() - this is how old "
    "the data is.", (), _when_up(lambda listing: (((), listing.taken_at),)),
    source="per project: when the served listing was started (with `--oms.min-interval` a listing is "
           "served again until it is that old)",
    example="`time() - oms_listing_timestamp_seconds`")
PROJECT_INFO_HELP = ("Facts of a target: its project's name and region, and the static labels of its "
                     "configuration (configured or discovered); the value is always 1. Join any series on project_id.")


def project_info(extra: tuple[str, ...] = ()) -> Family:
    """oms_project_info with the static label names `extra` (every target's `labels:` keys, in order)."""
    def series(listing: Listing) -> Series:
        t = listing.target
        return (((t.project_name or t.name, t.region, *(t.labels.get(k, "") for k in extra)), 1),)

    return project("oms_project_info", PROJECT_INFO_HELP, ("project_name", "region", *extra), series,
                   source="per target: `project_name`, `region` and its static `labels:`, value 1",
                   example="`oms_up * on (project_id) group_left (region) oms_project_info`")


COLLECTOR_SUCCESS = project(
    "oms_collector_success",
    "1 when the collector (API area: tasks, task_groups, sync_tasks) listed the project in the last "
    "scrape, 0 when that failed (its reason is in oms_scrape_errors_total). Only collectors switched on.",
    ("collector",), lambda listing: [((c,), 0 if e is not None else 1) for c, e in listing.collectors.items()],
    source="per project and collector (`tasks`, `task_groups`, `sync_tasks`): 1 when that API area was "
           "listed; a region without sync tasks counts as listed",
    example='`oms_collector_success{collector="task_groups"} == 0`')


# --- the exporter's own metrics --------------------------------------------------------------

# Fixed set of `reason` label values of oms_scrape_errors_total.
ERROR_REASONS = ("timeout", "throttled", "auth", "http_3xx", "http_4xx", "http_5xx", "bad_payload", "network",
                 "incomplete", "internal")
# `code` values of oms_api_requests_total exported (at 0) from the start: the HTTP statuses the
# OMS API documents, and the two for requests without an answer. Others appear when first seen.
KNOWN_API_CODES = ("200", "400", "401", "403", "404", "429", "500", "503", "timeout", "network")


@dataclass(frozen=True, slots=True)
class SelfFamily:
    """One of the exporter's own metrics (README row and prometheus_client object from one place)."""

    name: str  # as served (counters with _total)
    type: str
    help: str
    labels: tuple[str, ...]
    source: str
    example: str


SELF_FAMILIES = (
    SelfFamily("oms_exporter_build_info", "gauge", "Version of oms-exporter; the value is always 1.", ("version",),
               "the exporter's version", "`count by (version) (oms_exporter_build_info)`"),
    SelfFamily("oms_api_requests_total", "counter", "Requests sent to the OMS API, by HTTP status code "
               "(or 'timeout' / 'network' when no answer came).", ("project_id", "code"),
               "OMS requests by HTTP code (`timeout`, `network` when no answer); the codes OMS documents "
               "(200, 400, 401, 403, 404, 429, 500, 503) and `timeout`/`network` are exported at 0 from the "
               "start, others appear when first seen",
               "`sum by (code) (rate(oms_api_requests_total[5m]))`"),
    SelfFamily("oms_api_request_duration_seconds", "histogram",
               "Time from sending an OMS API request to reading its whole answer.", ("project_id",),
               "histogram of OMS request time",
               "`histogram_quantile(0.9, sum by (le) (rate(oms_api_request_duration_seconds_bucket[5m])))`"),
    SelfFamily("oms_scrape_errors_total", "counter",
               "Project listings in which an API area failed, by reason (areas failing for one reason count once).",
               ("project_id", "reason"),
               "failed listings by reason: " + ", ".join(ERROR_REASONS) + "; every reason of every target "
               "at 0 from the first scrape", "`increase(oms_scrape_errors_total[1h]) > 0`"),
    SelfFamily("oms_listings_total", "counter", "Listings of the project started upstream (concurrent scrapes "
               "share one; with --oms.min-interval a young listing is served again).", ("project_id",),
               "listings asked of OMS; fewer than scrapes when scrapes share them",
               "`rate(oms_listings_total[5m])`"),
    SelfFamily("oms_listing_fallbacks_total", "counter", "Finished states listed again in full because they lost "
               "tasks unseen (deleted, say) and probing their kept order could not place the gaps, by reason: "
               "no_order, contradicted, unexplained, cheaper, no_showtask.", ("project_id", "reason"),
               "with `--oms.listing=liveness`, finished states relisted instead of probed after a deletion, by "
               "reason (`" + "`, `".join(FALLBACK_REASONS) + "`; see docs/listing.md); every reason at 0 from the "
               "start", '`sum by (reason) (increase(oms_listing_fallbacks_total[1h]))`'),
    SelfFamily("oms_exporter_config_last_reload_successful", "gauge",
               "1 when the last reading of --config.file and --web.config.file (at start or on SIGHUP) succeeded.",
               (), "1 when the last (re)load of the files succeeded, 0 when a reload was refused (the settings "
               "in force stay)", "`oms_exporter_config_last_reload_successful == 0`"),
    SelfFamily("oms_exporter_config_last_reload_success_timestamp_seconds", "gauge",
               "Unix time of the last successful reading of the configuration files.", (),
               "when the files were last (re)loaded successfully",
               "`time() - oms_exporter_config_last_reload_success_timestamp_seconds`"),
    SelfFamily("oms_exporter_encodes_total", "counter", "Response bodies encoded (concurrent scrapes of the "
               "same listings in the same format share one).", (),
               "bodies encoded", "`rate(oms_exporter_encodes_total[5m])`"),
    SelfFamily("oms_discovery_projects", "gauge", "Projects the discovery entry found in its last successful "
               "refresh, by what became of them: scraped (a target), forbidden (OMS answered 403 there), "
               "not_offered (no OMS in that region), disabled, excluded (by the entry's lists, or not a region "
               "project, like MOS).", ("discovery", "state"),
               "per discovery entry: its projects by state (`scraped`, `forbidden`, `not_offered`, `disabled`, "
               "`excluded`), every state present", '`oms_discovery_projects{state="forbidden"} > 0`'),
    SelfFamily("oms_discovery_success", "gauge", "1 when the last refresh of the discovery entry succeeded (its "
               "project list is the last good one otherwise).", ("discovery",),
               "per discovery entry: 1 when its last refresh succeeded", "`oms_discovery_success == 0`"),
    SelfFamily("oms_discovery_last_success_timestamp_seconds", "gauge", "Unix time of the discovery entry's last "
               "successful refresh.", ("discovery",), "per discovery entry: when its project list was last good",
               "`time() - oms_discovery_last_success_timestamp_seconds > 1800`"),
    SelfFamily("oms_discovery_errors_total", "counter", "Failed refreshes of the discovery entry, by reason (the "
               "reasons of oms_scrape_errors_total).", ("discovery", "reason"),
               "per discovery entry: failed refreshes by reason, every reason at 0 from the start",
               "`increase(oms_discovery_errors_total[1h]) > 0`"),
    SelfFamily("oms_exporter_shard_info", "gauge", "The shard this replica serves (--shard.index of "
               "--shard.count; 0 of 1 unsharded); the value is always 1.", ("index", "count"),
               "this replica's shard: `index` of `count` (`0` of `1` unsharded), value 1",
               "`count by (count) (oms_exporter_shard_info)`"),
    SelfFamily("oms_exporter_shard_targets", "gauge", "Targets (configured and discovered) this replica "
               "serves: those of its shard.", (), "targets this replica serves (its shard's, configured and "
               "discovered)", "`sum(oms_exporter_shard_targets)`"),
    SelfFamily("oms_exporter_encoded_records_total", "counter", "Records written by the encoder: 'reused' "
               "when the record had not changed since the last encode (its lines were kept), 'rendered' "
               "when its lines were written anew.", ("kind", "result"),
               "records encoded, by whether their cached lines were reused",
               '`rate(oms_exporter_encoded_records_total{result="rendered"}[5m])`'),
)

SELF_METRIC_NAMES: frozenset[str] = frozenset(
    [f.name for f in SELF_FAMILIES if f.type != "histogram"]
    + [f.name + s for f in SELF_FAMILIES if f.type == "histogram" for s in ("_bucket", "_sum", "_count")])


class SelfMetrics:
    """The exporter's own metrics, in a registry owned by one web app (not a global one)."""

    def __init__(self, kinds: Iterable[str] = ("task", "task_group", "sync_task")) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._discovery_entries: set[str] = set()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        made: dict[str, Any] = {}
        for f in SELF_FAMILIES:
            if f.type == "counter":
                made[f.name] = Counter(f.name.removesuffix("_total"), f.help, f.labels, registry=self.registry)
            elif f.type == "histogram":
                made[f.name] = Histogram(f.name, f.help, f.labels, registry=self.registry,
                                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
            else:
                made[f.name] = Gauge(f.name, f.help, f.labels, registry=self.registry)
        made["oms_exporter_build_info"].labels(__version__).set(1)
        self.api_requests: Counter = made["oms_api_requests_total"]
        self.api_request_duration: Histogram = made["oms_api_request_duration_seconds"]
        self.scrape_errors: Counter = made["oms_scrape_errors_total"]
        self.listings: Counter = made["oms_listings_total"]
        self.fallbacks: Counter = made["oms_listing_fallbacks_total"]
        self.encodes: Counter = made["oms_exporter_encodes_total"]
        self.encoded_records: Counter = made["oms_exporter_encoded_records_total"]
        self.reload_successful: Gauge = made["oms_exporter_config_last_reload_successful"]
        self.reload_success_time: Gauge = made["oms_exporter_config_last_reload_success_timestamp_seconds"]
        self.discovery_projects: Gauge = made["oms_discovery_projects"]
        self.discovery_success: Gauge = made["oms_discovery_success"]
        self.discovery_success_time: Gauge = made["oms_discovery_last_success_timestamp_seconds"]
        self.discovery_errors: Counter = made["oms_discovery_errors_total"]
        self.shard_info: Gauge = made["oms_exporter_shard_info"]
        self.shard_targets: Gauge = made["oms_exporter_shard_targets"]
        self._shard: tuple[str, str] | None = None
        self.shard_served(0, 1, 0)
        for kind in kinds:
            for result in ("rendered", "reused"):
                self.encoded_records.labels(kind, result)

    def add_project(self, project_id: str) -> None:
        """Export every label set of `project_id` known in advance, at 0, from the first scrape on.

        A counter series that appears only with its first increment hides that increment
        from increase() and rate(), and leaves rules that name it without data.
        """
        for reason in ERROR_REASONS:
            self.scrape_errors.labels(project_id, reason)
        for code in KNOWN_API_CODES:
            self.api_requests.labels(project_id, code)
        self.api_request_duration.labels(project_id)
        self.listings.labels(project_id)
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(project_id, reason)

    def remove_project(self, project_id: str) -> None:
        """Drop every series of `project_id` (no longer configured after a reload, or no longer discovered)."""
        _remove(project_id, self.scrape_errors, self.api_requests, self.api_request_duration, self.listings,
                self.fallbacks)

    def add_discovery(self, entry: str, states: Iterable[str]) -> None:
        """Every series of the discovery entry `entry`, from the start: its states and reasons at 0, not
        (yet) successful. An entry already there (a reload keeps it) keeps its values."""
        if entry in self._discovery_entries:
            return
        self._discovery_entries.add(entry)
        for state in states:
            self.discovery_projects.labels(entry, state).set(0)
        for reason in ERROR_REASONS:
            self.discovery_errors.labels(entry, reason)
        self.discovery_success.labels(entry).set(0)

    def remove_discovery(self, entry: str) -> None:
        self._discovery_entries.discard(entry)
        _remove(entry, self.discovery_projects, self.discovery_success, self.discovery_success_time,
                self.discovery_errors)

    def discovery_refreshed(self, entry: str, counts: Mapping[str, int] | None, reason: str | None,
                            at: float) -> None:
        """A refresh of `entry` ended: the projects per state (None: it failed, for `reason`), at Unix time `at`."""
        if counts is None:
            self.discovery_success.labels(entry).set(0)
            self.discovery_errors.labels(entry, reason or "internal").inc()
            return
        for state, n in counts.items():
            self.discovery_projects.labels(entry, state).set(n)
        self.discovery_success.labels(entry).set(1)
        self.discovery_success_time.labels(entry).set(at)

    def shard_served(self, index: int, count: int, targets: int) -> None:
        """This replica serves shard `index` of `count`, which holds `targets` targets now."""
        shard = (str(index), str(count))
        if shard != self._shard:  # a reload changed it: one series, never two
            if self._shard is not None:
                self.shard_info.remove(*self._shard)
            self.shard_info.labels(*shard).set(1)
            self._shard = shard
        self.shard_targets.set(targets)

    def config_loaded(self, ok: bool, at: float) -> None:
        """The outcome of reading the configuration files (at start, or a reload) at Unix time `at`."""
        self.reload_successful.set(1 if ok else 0)
        if ok:
            self.reload_success_time.set(at)

    # --- what the rest of the exporter reports, handed these methods (it never imports this module)
    def request(self, project_id: str, code: str, seconds: float | None) -> None:
        """An OMS request of `project_id` ended: its HTTP status (or timeout/network), and how long
        its answer took (None: no answer)."""
        self.api_requests.labels(project_id, code).inc()
        if seconds is not None:
            self.api_request_duration.labels(project_id).observe(seconds)

    def listing_started(self, project_id: str) -> None:
        self.listings.labels(project_id).inc()

    def listing_failed(self, project_id: str, reason: str) -> None:
        self.scrape_errors.labels(project_id, reason).inc()

    def listing_fallback(self, project_id: str, reason: str) -> None:
        """A finished state was listed in full instead of probed, for `reason` (reconcile.FALLBACK_REASONS)."""
        self.fallbacks.labels(project_id, reason).inc()


def _remove(first: str, *metrics: Any) -> None:
    """Drop the series of `metrics` whose first label value is `first`."""
    for metric in metrics:
        names = metric._labelnames
        for labels in {tuple(s.labels.get(n, "") for n in names) for fam in metric.collect() for s in fam.samples}:
            if labels[0] == first:
                metric.remove(*labels)
