"""The OMS stand-in speaks the documented wire format; the official SDK reads it back field by field."""

import asyncio
import warnings
from datetime import UTC, datetime

import pytest

from oms_exporter.simulator import Credential
from tests.conftest import AK, PROJECT, SK, TOKEN

huaweicloudsdkoms = pytest.importorskip("huaweicloudsdkoms")


async def _get(oms, query="", token=TOKEN, project=PROJECT):
    headers = {"X-Auth-Token": token} if token else {}
    async with __import__("aiohttp").ClientSession() as s:
        async with s.get(oms.make_url(f"/v2/{project}/tasks{query}"), headers=headers) as resp:
            return resp.status, await resp.json()


async def test_default_page_count_and_newest_first(oms, sim):
    status, body = await _get(oms)
    assert status == 200 and body["count"] == 250 and len(body["tasks"]) == 10  # default limit 10
    ids = [t["id"] for t in body["tasks"]]
    assert ids == sorted(ids, reverse=True) and ids[0] == max(sim.projects[PROJECT])
    status, body = await _get(oms, "?limit=100&offset=200")
    assert [t["id"] for t in body["tasks"]] == list(range(50, 0, -1))


@pytest.mark.parametrize("query", ["?limit=0", "?limit=101", "?limit=x", "?offset=-1", "?status=0", "?status=8",
                                   "?status=two", "?group_id=" + "g" * 101])
async def test_bad_parameters_are_oms_0064(oms, query):
    status, body = await _get(oms, query)
    assert status == 400 and body["error_code"] == "OMS.0064" and body["error_msg"]


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_bad_token_is_apigw_0301(oms, token):
    status, body = await _get(oms, token=token)
    assert status == 401 and body["error_code"] == "APIGW.0301" and body["request_id"]


async def test_expired_token(oms, sim):
    sim.tokens["old"] = sim.clock() - 1
    status, body = await _get(oms, token="old")
    assert status == 401 and body["error_code"] == "APIGW.0301"


async def test_status_and_group_filters(oms, sim):
    status, body = await _get(oms, "?status=4&limit=100")
    want = sorted((t["id"] for t in sim.projects[PROJECT].values() if t["status"] == 4), reverse=True)
    assert body["count"] == len(want) and [t["id"] for t in body["tasks"]] == want[:100]
    group = next(t["group_id"] for t in sim.projects[PROJECT].values() if t["group_id"])
    status, body = await _get(oms, f"?group_id={group}&limit=100")
    assert body["tasks"] and all(t["group_id"] == group for t in body["tasks"])


async def test_offset_cap_edition(oms, sim):
    sim.max_offset = 10000
    assert (await _get(oms, "?offset=10000"))[0] == 200
    assert (await _get(oms, "?offset=10001"))[0] == 400


def _without_none(v):
    """SDK models fill fields the answer did not have with None, nested ones too."""
    if isinstance(v, dict):
        return {k: _without_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_without_none(x) for x in v]
    return v


def _sdk_client(oms):
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkoms.v2 import OmsClient

    return (OmsClient.new_builder()
            .with_credentials(BasicCredentials(AK, SK, PROJECT))
            .with_endpoints([str(oms.make_url("")).rstrip("/")])
            .build())


async def test_official_sdk_reads_every_field_back(oms, sim):
    from huaweicloudsdkoms.v2 import ListTasksRequest, TaskResp

    # Cover every kind of value: an error, bandwidth windows, a CJK name, a float progress.
    t = sim.projects[PROJECT][250]
    t.update(name="迁移 \"q\" \\ 🚚", status=4, progress=0.5221,
             error_reason={"error_code": "OMS.1201", "error_msg": "denied"},
             bandwidth_policy=[{"start": "00:00", "end": "08:00", "max_bandwidth": 1048576}],
             source_cdn={"domain": "cdn.example.com", "protocol": "https", "authentication_type": "NONE"})
    client = _sdk_client(oms)
    resp = await asyncio.to_thread(client.list_tasks, ListTasksRequest(limit=100, offset=0))
    assert resp.count == 250 and len(resp.tasks) == 100
    known = set(TaskResp.attribute_map.values())
    for sdk_task in resp.tasks:
        raw = sim.projects[PROJECT][sdk_task.id]
        back = sdk_task.to_dict()
        for key, raw_value in raw.items():
            if key not in known:
                # A field of a newer API edition than the SDK's: the wire notes say so.
                assert key in {"enable_kms"}, f"stand-in sends {key!r}, which no edition documents"
                continue
            attr = next(a for a, k in TaskResp.attribute_map.items() if k == key)
            assert _without_none(back[attr]) == raw_value, (sdk_task.id, key)
    filtered = await asyncio.to_thread(client.list_tasks, ListTasksRequest(limit=5, offset=0, status=4))
    assert filtered.tasks[0].id == 250 and filtered.tasks[0].error_reason.error_code == "OMS.1201"


async def test_official_sdk_sees_oms_errors(oms, sim):
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from huaweicloudsdkoms.v2 import ListTasksRequest

    sim.credentials[AK] = Credential("another-secret")
    with pytest.raises(ClientRequestException) as exc:
        await asyncio.to_thread(_sdk_client(oms).list_tasks, ListTasksRequest(limit=10))
    assert exc.value.status_code == 401 and exc.value.error_code == "APIGW.0301"


async def test_cached_json_follows_every_change():
    """cache_json (demo, benchmark): pages reflect put_task, patch_task and remove_task at once."""
    import msgspec

    from oms_exporter.simulator import Simulator, make_tasks

    cached, plain = Simulator(cache_json=True), Simulator()
    for sim in (cached, plain):
        sim.add_project(PROJECT, make_tasks(30, seed=3, now_ms=1_700_000_000_000))
        sim.patch_task(PROJECT, 5, status=4, progress=0.25)
        sim.remove_task(PROJECT, 7)
        sim.put_task(PROJECT, {**sim.projects[PROJECT][9], "id": 99})
    pages = []
    for sim in (cached, plain):
        ids = sim._order[PROJECT]
        pages.append(msgspec.json.encode({"tasks": [sim._task_json(PROJECT, i) for i in ids[::-1]]}))
    cached.patch_task(PROJECT, 5, progress=0.5)
    assert pages[0] == pages[1]
    assert msgspec.json.decode(msgspec.json.encode(cached._task_json(PROJECT, 5)))["progress"] == 0.5


async def test_official_sdk_shows_one_task_and_sees_a_deleted_one_as_404(oms, sim):
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from huaweicloudsdkoms.v2 import ShowTaskRequest, TaskResp

    client = _sdk_client(oms)
    shown = await asyncio.to_thread(client.show_task, ShowTaskRequest(task_id=42))
    raw = sim.projects[PROJECT][42]
    known = set(TaskResp.attribute_map.values())
    for attr, key in TaskResp.attribute_map.items():
        if key in raw and key in known:
            assert _without_none(getattr(shown, attr) if not hasattr(getattr(shown, attr), "to_dict")
                                 else getattr(shown, attr).to_dict()) == raw[key], key
    sim.remove_task(PROJECT, 42)
    with pytest.raises(ClientRequestException) as exc:
        await asyncio.to_thread(client.show_task, ShowTaskRequest(task_id=42))
    assert exc.value.status_code == 404


async def test_an_edition_that_refuses_status_6_as_a_filter(oms, sim):
    sim.status_filters = frozenset({1, 2, 3, 4, 5, 7})
    assert (await _get(oms, "?status=6"))[0] == 400
    assert (await _get(oms, "?status=7"))[0] == 200


async def test_filtered_lists_follow_state_changes(oms, sim):
    """The stand-in keeps filtered id lists between requests; a change of state or a new task renews them."""
    count = (await _get(oms, "?status=2&limit=1"))[1]["count"]
    tid = next(t for t, task in sim.projects[PROJECT].items() if task["status"] == 2)
    sim.patch_task(PROJECT, tid, status=5)
    assert (await _get(oms, "?status=2&limit=1"))[1]["count"] == count - 1
    sim.put_task(PROJECT, {**sim.projects[PROJECT][tid], "id": 9999, "status": 2})
    assert (await _get(oms, "?status=2&limit=1"))[1]["count"] == count


# --- task groups and synchronization tasks ---------------------------------------------------

async def _get_path(oms, path, token=TOKEN):
    async with __import__("aiohttp").ClientSession() as s:
        async with s.get(oms.make_url(f"/v2/{PROJECT}/{path}"), headers={"X-Auth-Token": token}) as resp:
            return resp.status, await resp.json()


def _assert_read_back(model_cls, sdk_obj, raw, allowed_extra=frozenset({"enable_kms"})):
    """Every field of `raw` read back through the SDK model equal, and every field the model has sent."""
    with warnings.catch_warnings():  # responses' to_dict() is "deprecated" for to_json_object(), the raw
        warnings.simplefilter("ignore", DeprecationWarning)  # body: the model's fields are what is checked
        back = sdk_obj.to_dict()
    keys = dict((k, a) for a, k in model_cls.attribute_map.items())
    for key, raw_value in raw.items():
        if key not in keys:
            # A field of an older API edition than the SDK's (the reference names it).
            assert key in allowed_extra, f"stand-in sends {key!r}, which no edition documents"
            continue
        assert _without_none(back[keys[key]]) == raw_value, key
    assert set(keys) - set(raw) == set(), f"the stand-in does not send {set(keys) - set(raw)}"


def _groups_and_syncs(sim):
    from oms_exporter.simulator import add_groups_and_syncs

    add_groups_and_syncs(sim, PROJECT, now_ms=int(sim.clock() * 1000))


async def test_official_sdk_reads_every_task_group_field_back(oms, sim):
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from huaweicloudsdkoms.v2 import ListTaskGroupRequest, ShowTaskGroupRequest, TaskGroupResp

    _groups_and_syncs(sim)
    sim.groups[PROJECT]["3f0c9a6e5b7d4c21a8e90f1b2c3d4e5f"]["enable_kms"] = False  # older editions sent it
    client = _sdk_client(oms)
    resp = await asyncio.to_thread(client.list_task_group, ListTaskGroupRequest(limit=100, offset=0))
    assert resp.count == len(sim.groups[PROJECT]) == len(resp.taskgroups) >= 5
    for g in resp.taskgroups:
        _assert_read_back(TaskGroupResp, g, sim.group_resp(PROJECT, g.group_id))
    assert {g.status for g in resp.taskgroups} >= {1, 2, 4, 5}
    one = await asyncio.to_thread(client.show_task_group, ShowTaskGroupRequest(group_id=resp.taskgroups[0].group_id))
    _assert_read_back(TaskGroupResp, one, sim.group_resp(PROJECT, one.group_id))
    failed = await asyncio.to_thread(client.list_task_group, ListTaskGroupRequest(limit=10, status=4))
    assert failed.count == 1 and failed.taskgroups[0].error_reason.error_code == "TRF.0013"
    page = await asyncio.to_thread(client.list_task_group, ListTaskGroupRequest(limit=2, offset=2))
    assert [g.group_id for g in page.taskgroups] == [g.group_id for g in resp.taskgroups[2:4]]
    with pytest.raises(ClientRequestException) as exc:
        await asyncio.to_thread(client.show_task_group, ShowTaskGroupRequest(group_id="no-such-group"))
    assert exc.value.status_code == 404
    with pytest.raises(ClientRequestException) as exc:
        await asyncio.to_thread(client.list_task_group, ListTaskGroupRequest(limit=101))
    assert exc.value.status_code == 400 and exc.value.error_code == "OMS.0064"


async def test_group_counts_are_those_of_its_tasks_in_list_tasks(oms, sim):
    _groups_and_syncs(sim)
    for gid in sim.groups[PROJECT]:
        status, tasks = await _get_path(oms, f"tasks?group_id={gid}&limit=100")
        members = [t for t in tasks["tasks"] if t["group_type"] == "GROUP_TASK"]
        status, group = await _get_path(oms, f"taskgroups/{gid}")
        assert status == 200 and group["create_task_num"] == len(members)
        assert group["failed_task_num"] == sum(t["status"] == 4 for t in members)
        assert group["complete_task_num"] == sum(t["status"] == 5 for t in members)
        assert group["success_num"] == sum(t["successful_num"] for t in members)
        assert group["fail_num"] == sum(t["failed_num"] for t in members)
        assert group["complete_size"] == sum(t["complete_size"] for t in members)
    # Sync tasks run SYNC_TASK tasks.
    sync_tasks = [t for t in sim.projects[PROJECT].values() if t["group_type"] == "SYNC_TASK"]
    assert {t["group_id"] for t in sync_tasks} == set(sim.sync_tasks[PROJECT])


@pytest.mark.parametrize("path", ["taskgroups?limit=0", "taskgroups?limit=101", "taskgroups?offset=-1",
                                  "taskgroups?status=10", "taskgroups?status=-1", "taskgroups?status=x",
                                  "sync-tasks?offset=10001", "sync-tasks?status=2", "sync-tasks?status=stopped",
                                  "sync-tasks?limit=0", "sync-tasks/4fb05cd2-c94e-44e4-a07f-e65a2f01ebcb",
                                  "sync-tasks/4fb05cd2-c94e-44e4-a07f-e65a2f01ebcb?query_time=soon"])
async def test_group_and_sync_parameters_are_checked(oms, sim, path):
    _groups_and_syncs(sim)
    status, body = await _get_path(oms, path)
    assert status == 400 and body["error_code"] == "OMS.0064", body


async def test_official_sdk_reads_every_sync_task_field_back(oms, sim):
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from huaweicloudsdkoms.v2 import ListSyncTasksRequest, ShowSyncTaskRequest, ShowSyncTaskResponse, SyncTaskInfo

    _groups_and_syncs(sim)
    client = _sdk_client(oms)
    resp = await asyncio.to_thread(client.list_sync_tasks, ListSyncTasksRequest(limit=100, offset=0))
    assert resp.count == 2 == len(resp.tasks)
    for t in resp.tasks:
        raw = {k: v for k, v in sim.sync_tasks[PROJECT][t.sync_task_id].items() if k != "monthly"}
        _assert_read_back(SyncTaskInfo, t, raw)
    stopped = await asyncio.to_thread(client.list_sync_tasks, ListSyncTasksRequest(limit=10, status="STOPPED"))
    assert [t.status for t in stopped.tasks] == ["STOPPED"] and stopped.count == 1
    now_ms = int(sim.clock() * 1000)
    sid = "4fb05cd2-c94e-44e4-a07f-e65a2f01ebcb"
    shown = await asyncio.to_thread(client.show_sync_task, ShowSyncTaskRequest(sync_task_id=sid, query_time=now_ms))
    raw = {k: v for k, v in sim.sync_tasks[PROJECT][sid].items() if k not in ("monthly", "source_cdn")}
    month = datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%Y-%m")
    raw |= sim.sync_tasks[PROJECT][sid]["monthly"][month]
    _assert_read_back(ShowSyncTaskResponse, shown, raw)
    assert shown.monthly_acceptance_request == 120_000 and shown.monthly_failure_object == 40
    # Another month: its own counters (none here: zeros).
    before = await asyncio.to_thread(client.show_sync_task, ShowSyncTaskRequest(
        sync_task_id=sid, query_time=now_ms - 62 * 86_400_000))
    assert before.monthly_acceptance_request == 0 and before.monthly_size == 0
    with pytest.raises(ClientRequestException) as exc:
        await asyncio.to_thread(client.show_sync_task, ShowSyncTaskRequest(sync_task_id="gone", query_time=now_ms))
    assert exc.value.status_code == 404
    sim.sync_supported = False  # a region that does not publish the sync-task APIs
    for call, request in ((client.list_sync_tasks, ListSyncTasksRequest(limit=10)),
                          (client.show_sync_task, ShowSyncTaskRequest(sync_task_id=sid, query_time=now_ms))):
        with pytest.raises(ClientRequestException) as exc:
            await asyncio.to_thread(call, request)
        assert exc.value.status_code == 404 and exc.value.error_code == "APIGW.0101"
