"""An API area of OMS (tasks, task groups, sync tasks) as one declaration.

An `Area` carries everything the exporter needs of one area: its one name (the `collector`
label, the YAML key of a target, the log field, `--collector.<name with hyphens>`), where
its list lives and how a list answer holds its records, its record type, its metric
families, its request slots, whether it is on by default, and how to list it. Settings,
the listing, the encoder, the web app and the stand-in iterate the table of areas
(`catalog.AREAS`); adding an area is its record type, its module (families and lister)
and one line in that table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from oms_exporter.client import OmsClient
from oms_exporter.clock import Clock
from oms_exporter.listing import Part
from oms_exporter.metrics import Family, Kind
from oms_exporter.settings import MAX_OFFSET, Options, Target


class AreaLister(Protocol):
    """Lists one area of one target; `run` never raises an OmsError (its Part says what failed)."""

    async def run(self, deadline: float) -> Part: ...


@dataclass(frozen=True, slots=True)
class Context:
    """What a lister of one target is made from."""

    area: Area
    client: OmsClient
    target: Target
    clock: Clock
    options: Options


@dataclass(frozen=True)
class Area:
    name: str  # one spelling: collector label, YAML key, log field; flag --collector.<name, hyphens>
    what: str  # its records in words ("task groups"): help texts
    api: str  # the list's name in the API reference (ListTaskGroup): log lines and errors
    path: str  # request path below /v2/{project_id}/ of its list
    records_key: str  # the key of a list answer that holds its records
    record: type[Any]  # the record type (model.py): a frozen msgspec Struct with the wire names
    kind: Kind  # what its record families read: the kind's name and the records' id label
    families: tuple[Family, ...]
    lister: Callable[[Context], AreaLister]
    slots: Callable[[int], int] = lambda max_concurrency: max_concurrency  # its requests in flight per target
    default: bool = True  # listed unless --no-collector.<name> or a target's `<name>: false` says otherwise
    optional: bool = True  # False: always listed (the tasks)
    max_offset: int = MAX_OFFSET  # the highest offset its list documents

    @property
    def flag(self) -> str:
        return "collector." + self.name.replace("_", "-")
