"""An API area is one declaration: a toy area added through the three places README names, and no other.

The three places, as README's "Adding an API area" lists them:
1. its record type (here `Widget`; in the package, model.py),
2. its module: its families and its `Area` (here below; in the package, like groups.py),
3. one line in the table of areas (here `AREAS_WITH_WIDGETS`; in the package, catalog.AREAS).
Settings, the stand-in, the listing, the encoder and the web app then serve it.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import msgspec
import pytest
from aiohttp.test_utils import TestServer
from msgspec import field

from oms_exporter.area import Area
from oms_exporter.catalog import AREAS, families, switches
from oms_exporter.metrics import Family, Kind, _records_per_state, _state_set, gauge, project, record
from oms_exporter.model import Num
from oms_exporter.pager import PagedLister
from oms_exporter.settings import Options, Settings, load
from oms_exporter.web import make_app
from tests.conftest import PROJECT, TOKEN, ManualClock, scrape, target_for, value, values
from tests.standin import StandIn


# 1. The record: its fields, with their wire names.
class Widget(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    id: Annotated[str, msgspec.Meta(min_length=1)] = field(name="widget_id")
    state: str | None = None
    size: Num | None = field(default=None, name="size_bytes")


# 2. Its module: families and the area.
WIDGET = Kind("widget", "widget_id")
WIDGET_STATES = {"ON": "on", "OFF": "off"}
FAMILIES: tuple[Family, ...] = (
    project("oms_widgets", "Widgets per state.", ("state",),
            _records_per_state(lambda listing: listing.records("widgets"), WIDGET_STATES, "state")),
    record("oms_widget_state", "State of a widget.", ("state",), ("state",), _state_set(WIDGET_STATES), kind=WIDGET),
    partial(gauge, kind=WIDGET)("oms_widget_size_bytes", "Size of a widget (size_bytes).", "size",
                                source="`size_bytes`"),
)
WIDGETS = Area(name="widgets", what="widgets", api="ListWidgets", path="widgets", records_key="widgets",
               record=Widget, kind=WIDGET, families=FAMILIES, lister=PagedLister,
               slots=lambda max_concurrency: 1, max_offset=1000)

# 3. One line in the table.
AREAS_WITH_WIDGETS = (*AREAS, WIDGETS)


@pytest.fixture
async def widgets_oms(clock: ManualClock, aiohttp_server: Any) -> tuple[StandIn, TestServer]:
    sim = StandIn(tokens={TOKEN}, clock=clock.time, sleep=clock.sleep, areas=AREAS_WITH_WIDGETS)
    sim.add_project(PROJECT, [])
    for i, (state, size) in enumerate([("ON", 10), ("OFF", 20), ("ON", None)]):
        sim.put_record("widgets", PROJECT, f"w{i}", {"widget_id": f"w{i}", "state": state,
                                                    **({"size_bytes": size} if size is not None else {})})
    return sim, await aiohttp_server(sim.app())


async def test_a_toy_area_is_listed_and_served_from_its_declaration(
        widgets_oms: tuple[StandIn, TestServer], clock: ManualClock, aiohttp_client: Any) -> None:
    sim, server = widgets_oms
    settings = Settings(options=Options(), targets=[target_for(server)], switches=switches(AREAS_WITH_WIDGETS))
    client = await aiohttp_client(make_app(settings, clock=clock, areas=AREAS_WITH_WIDGETS))
    s = await scrape(client)
    assert value(s, "oms_up", project_id=PROJECT) == 1
    assert value(s, "oms_collector_success", project_id=PROJECT, collector="widgets") == 1
    assert value(s, "oms_widget_size_bytes", project_id=PROJECT, widget_id="w1") == 20
    assert values(s, "oms_widget_size_bytes", widget_id="w2") == {}
    assert value(s, "oms_widget_state", project_id=PROJECT, widget_id="w0", state="on") == 1
    assert value(s, "oms_widgets", project_id=PROJECT, state="on") == 2
    assert ("/v2/" + PROJECT + "/widgets", "limit=100&offset=0") in sim.calls
    # Its families come after every built-in area's, in the order declared (oms_project_info closes).
    assert [f.name for f in families(AREAS_WITH_WIDGETS)][-4:-1] == [f.name for f in FAMILIES]
    # A widget gone upstream is gone from /metrics.
    del sim.records["widgets"][PROJECT]["w1"]
    s = await scrape(client)
    assert values(s, "oms_widget_size_bytes", widget_id="w1") == {}


async def test_a_toy_area_is_switched_by_its_flag_and_a_target_key(
        widgets_oms: tuple[StandIn, TestServer], clock: ManualClock, aiohttp_client: Any, tmp_path: Any) -> None:
    sim, server = widgets_oms
    f = tmp_path / "c.yml"
    f.write_text(f"targets:\n  - {{name: a, project_id: {PROJECT}, region: cn-north-4, auth_token: {TOKEN}, "
                 f"endpoint: '{str(server.make_url('')).rstrip('/')}', widgets: true}}\n")
    on = load({"collectors": {"widgets": "false"}}, f, switches=switches(AREAS_WITH_WIDGETS))
    assert on.lists(on.targets[0], "widgets")  # the target's own key beats the flag
    off = load({"collectors": {"widgets": "false"}}, None, only_target=target_for(server),
               switches=switches(AREAS_WITH_WIDGETS))
    client = await aiohttp_client(make_app(off, clock=clock, areas=AREAS_WITH_WIDGETS))
    s = await scrape(client)
    assert values(s, "oms_collector_success", collector="widgets") == {}
    assert not [c for c in sim.calls if c[0].endswith("/widgets")]
    # Without the area in the table, its key is no setting.
    with pytest.raises(Exception, match="widgets"):
        load({}, f, switches=switches(AREAS))
