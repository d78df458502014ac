"""The OMS stand-in: an aiohttp app speaking the documented wire format, with tasks that move.

Used by `oms-exporter --demo`, by the tests and by the benchmark. It checks credentials the
way the API gateway does (X-Auth-Token, SDK-HMAC-SHA256 signatures with the 15-minute date
window, IAM password tokens from `POST /v3/auth/tokens`), validates query parameters like
OMS (400 `OMS.0064`), filters by `status` and `group_id`, and orders tasks newest first.
What only tests need (fault injection, request logs, added latency) is in tests/standin.py.
"""

from __future__ import annotations

import bisect
import copy
import hmac
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from oms_exporter.area import Area
from oms_exporter.auth import ALGORITHM, DATE_FORMAT, signature, string_to_sign
from oms_exporter.catalog import AREAS

MAX_SKEW = 15 * 60
SYNC_COUNTERS = ("monthly_acceptance_request", "monthly_success_object", "monthly_failure_object",
                 "monthly_skip_object", "monthly_size")
# The TaskGroupResp fields of a new group that are neither counted from its tasks nor given.
GROUP_DEFAULTS: dict[str, Any] = {
    "description": "", "task_type": "PREFIX", "start_time": 0, "total_time": 0, "migrate_since": 0,
    "src_node": {"cloud_type": "AWS", "region": "", "bucket": "", "object_key": []},
    "dst_node": {"region": "", "bucket": "", "save_prefix": ""},
    "error_reason": {"error_code": "", "error_msg": ""},
    "enable_metadata_migration": False, "enable_failed_object_recording": True, "enable_restore": False,
    "enable_requester_pays": False, "bandwidth_policy": [],
    "smn_config": {"notify_result": True, "notify_error_message": "", "topic_name": ""},
    "source_cdn": {"domain": "", "protocol": "https", "authentication_type": "NONE"},
    "failed_object_record": {"result": True, "list_file_key": "", "error_code": ""},
    "object_overwrite_mode": "SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE", "dst_storage_policy": "STANDARD",
    "consistency_check": "size_last_modified", "obs_system": "BUCKET",
}
# The SyncTaskInfo fields of a new sync task that are not given.
SYNC_DEFAULTS: dict[str, Any] = {
    "src_cloud_type": "AWS", "src_region": "", "src_bucket": "", "dst_region": "", "dst_bucket": "",
    "description": "", "status": "SYNCHRONIZING", "create_time": 0, "last_start_time": 0,
    "enable_metadata_migration": False, "enable_restore": False, "app_id": "",
    "source_cdn": {"domain": "", "protocol": "https", "authentication_type": "NONE"},
    "object_overwrite_mode": "SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE", "dst_storage_policy": "STANDARD",
    "consistency_check": "size_last_modified", "monthly": {},
}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=msgspec.json.encode(body), status=status, headers=headers,
                        content_type="application/json")


def _error(status: int, code: str, msg: str) -> web.Response:
    body = {"error_code": code, "error_msg": msg}
    if code.startswith("APIGW"):
        body["request_id"] = secrets.token_hex(16)
    return _json(body, status)


def _bad_param(msg: str = "Invalid request parameters.") -> web.Response:
    return _error(400, "OMS.0064", msg)


def _unauthorized(msg: str) -> web.Response:
    return _error(401, "APIGW.0301", msg)


@dataclass
class Credential:
    sk: str
    security_token: str | None = None


class Simulator:
    """State of the stand-in: projects with their tasks, and the credentials it accepts."""

    def __init__(self, *, tokens: set[str] | None = None, credentials: dict[str, Credential] | None = None,
                 iam_users: dict[tuple[str, str], str] | None = None, token_lifetime: float = 86400.0,
                 max_offset: int = 2147483647, clock: Callable[[], float] = time.time,
                 cache_json: bool = False, status_filters: frozenset[int] = frozenset(range(1, 8)),
                 areas: tuple[Area, ...] = AREAS) -> None:
        """`clock`: Unix time, for signature dates and token expiry. `cache_json` keeps each task's
        JSON text until put_task/patch_task/remove_task changes it (the demo and the benchmark
        change tasks only so): a real OMS does not spend the CPU of the machine under test,
        and the benchmark's stand-in should not either."""
        self.projects: dict[str, dict[int, dict[str, Any]]] = {}
        self._order: dict[str, list[int]] = {}  # task ids ascending (the newest is last)
        self.tokens: dict[str, float] = {t: float("inf") for t in (tokens or ())}  # token -> expiry
        self.credentials = credentials or {}
        self.iam_users = iam_users or {}  # (domain, user) -> password
        self.token_lifetime = token_lifetime
        self.max_offset = max_offset
        # The `status` values ListTasks accepts as a filter: the reference's range is 1..7, but
        # its table of values leaves out 6 (retrying); an edition that refuses it is one option.
        self.status_filters = status_filters
        self.clock = clock
        self._json: dict[tuple[str, int], msgspec.Raw] | None = {} if cache_json else None
        # Filtered id lists, newest first, per (project, status, group), for as long as no task
        # of the project is added, removed or changes state or group.
        self._filtered: dict[tuple[str, int | None, str | None], list[int]] = {}
        # Task groups: what is not counted from their tasks (TaskGroupResp fields), per project.
        self.groups: dict[str, dict[str, dict[str, Any]]] = {}
        # Synchronization tasks (SyncTaskInfo fields), with "monthly": {"YYYY-MM": counters}.
        self.sync_tasks: dict[str, dict[str, dict[str, Any]]] = {}
        # False: the region does not publish the sync-task APIs (the gateway answers 404 APIGW.0101).
        self.sync_supported = True
        # The GROUP_TASK tasks of each group, per project, until a task of the project changes.
        self._members: dict[str, dict[str, list[dict[str, Any]]]] = {}
        # The API areas served; an area without a route of its own below is served from `records`
        # (area name -> project -> record id -> its JSON fields), paged as its list documents.
        self.areas = areas
        self.records: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        # IAM: the account's projects (AuthProjectResult fields) that GET /v3/auth/projects lists,
        # and the scope of each token IAM issued (a project id; None: the account).
        self.iam_projects: list[dict[str, Any]] = []
        self.token_scopes: dict[str, str | None] = {}

    # --- state ---------------------------------------------------------------------------
    def add_project(self, project_id: str, tasks: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
        self.projects.setdefault(project_id, {})
        self._order.setdefault(project_id, [])
        self.groups.setdefault(project_id, {})
        self.sync_tasks.setdefault(project_id, {})
        for t in tasks:
            self.put_task(project_id, t)

    def put_task(self, project_id: str, task: dict[str, Any]) -> None:
        tasks = self.projects[project_id]
        tid = task["id"]
        group_id = task.get("group_id")
        if task.get("group_type") == "GROUP_TASK" and group_id and group_id not in self.groups[project_id]:
            # A task of a group the account does not have yet: the group, as OMS made it.
            src, dst = task.get("src_node") or {}, task.get("dst_node") or {}
            self.put_group(project_id, {
                "group_id": group_id,
                "src_node": {"cloud_type": str(src.get("cloud_type", "")).upper(), "region": src.get("region", ""),
                             "bucket": src.get("bucket", ""), "object_key": src.get("object_key", [])},
                "dst_node": {"region": dst.get("region", ""), "bucket": dst.get("bucket", ""), "save_prefix": ""},
                # Groups know three task types: LIST, URL_LIST and PREFIX (the default).
                "task_type": {"list": "LIST", "url_list": "URL_LIST"}.get(task.get("task_type", ""), "PREFIX"),
                "start_time": task.get("start_time", 0), "total_time": task.get("total_time", 0)})
        if tid not in tasks:
            bisect.insort(self._order[project_id], tid)
        tasks[tid] = task
        self._changed(project_id, tid)

    def patch_task(self, project_id: str, task_id: int, **fields: Any) -> dict[str, Any]:
        task = self.projects[project_id][task_id]
        task.update(fields)
        self._changed(project_id, task_id, moved="status" in fields or "group_id" in fields)
        return task

    def remove_task(self, project_id: str, task_id: int) -> None:
        del self.projects[project_id][task_id]
        self._order[project_id].remove(task_id)
        self._changed(project_id, task_id)

    def put_group(self, project_id: str, group: dict[str, Any]) -> None:
        """A task group: its own fields (group_id, status, src_node, dst_node, task_type, the planned
        total_task_num / total_num / total_size, ...) over the defaults of a new group; what is not
        given is counted from its tasks (the status too)."""
        self.groups[project_id][group["group_id"]] = copy.deepcopy(GROUP_DEFAULTS) | group

    def put_sync_task(self, project_id: str, sync: dict[str, Any]) -> None:
        """A synchronization task (SyncTaskInfo fields over the defaults, and "monthly":
        {"YYYY-MM": the monthly counters of that month, UTC})."""
        self.sync_tasks[project_id][sync["sync_task_id"]] = copy.deepcopy(SYNC_DEFAULTS) | sync

    def group_resp(self, project_id: str, group_id: str) -> dict[str, Any]:
        """The TaskGroupResp of a group: its own fields, and the counts of its tasks in ListTasks."""
        group = self.groups[project_id][group_id]
        index = self._members.get(project_id)
        if index is None:
            index = self._members[project_id] = {}
            for t in self.projects[project_id].values():
                if t.get("group_type") == "GROUP_TASK" and t.get("group_id"):
                    index.setdefault(t["group_id"], []).append(t)
        members = index.get(group_id, [])

        def count(*states: int) -> int:
            return sum(1 for t in members if t.get("status") in states)

        def total(field: str) -> int:
            return sum(t.get(field) or 0 for t in members)

        derived = {
            "create_task_num": len(members), "executing_task_num": count(2, 6), "waiting_task_num": count(1),
            "paused_task_num": count(3, 7), "failed_task_num": count(4), "complete_task_num": count(5),
            "success_num": total("successful_num"), "fail_num": total("failed_num"), "skip_num": total("skipped_num"),
            "complete_size": total("complete_size"), "create_complete_num": total("total_num"),
            "create_complete_size": total("total_size"), "migrate_speed": total("migrate_speed"),
        }
        resp = {**derived, "total_task_num": len(members), "total_num": derived["create_complete_num"],
                "total_size": derived["create_complete_size"], **group}
        if "status" not in group:
            live = count(1, 2, 3, 6, 7)
            resp["status"] = (0 if not members else 2 if live else 5 if count(4) else 6)
        return resp

    def clear(self, project_id: str) -> None:
        self.projects[project_id].clear()
        self._order[project_id].clear()
        self._filtered = {k: v for k, v in self._filtered.items() if k[0] != project_id}
        self._members.pop(project_id, None)
        if self._json is not None:
            self._json = {k: v for k, v in self._json.items() if k[0] != project_id}

    def _changed(self, project_id: str, task_id: int, moved: bool = True) -> None:
        self._members.pop(project_id, None)
        if self._json is not None:
            self._json.pop((project_id, task_id), None)
        if moved:
            self._filtered = {k: v for k, v in self._filtered.items() if k[0] != project_id}

    def _task_json(self, project_id: str, task_id: int) -> dict[str, Any] | msgspec.Raw:
        task = self.projects[project_id][task_id]
        if self._json is None:
            return task
        raw = self._json.get((project_id, task_id))
        if raw is None:
            raw = self._json[(project_id, task_id)] = msgspec.Raw(msgspec.json.encode(task))
        return raw

    # --- HTTP ----------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        own = {"tasks": (self._list_tasks, self._show_task),
               "task_groups": (self._list_task_groups, self._show_task_group),
               "sync_tasks": (self._list_sync_tasks, self._show_sync_task)}
        for area in self.areas:
            listing, show = own.get(area.name) or (self._list_records(area), self._show_record(area))
            app.router.add_get(f"/v2/{{project_id}}/{area.path}", listing)
            app.router.add_get(f"/v2/{{project_id}}/{area.path}/{{record_id}}", show)
        app.router.add_post("/v3/auth/tokens", self._iam_tokens)
        app.router.add_get("/v3/auth/projects", self._iam_projects)
        return app

    def add_iam_project(self, name: str, project_id: str | None = None, *, enabled: bool = True,
                        parent_id: str = "0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f") -> str:
        """A project of the account, as IAM lists it; its id (made up when not given)."""
        pid = project_id or secrets.token_hex(16)
        self.iam_projects.append({
            "id": pid, "name": name, "enabled": enabled, "domain_id": "0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f",
            "parent_id": parent_id, "is_domain": False, "description": "",
            "links": {"self": f"https://iam.myhuaweicloud.com/v3/projects/{pid}"}})
        return pid

    async def _iam_projects(self, request: web.Request) -> web.Response:
        """KeystoneListAuthProjects: the projects the credentials of the request can see (all of them)."""
        denied = await self._authenticate(request, "", oms=False)
        if denied is not None:
            return denied
        return _json({"links": {"self": str(request.url)}, "projects": self.iam_projects})

    def put_record(self, area: str, project_id: str, record_id: str, fields: dict[str, Any]) -> None:
        """A record of an API area without a route of its own (its JSON fields, its id among them)."""
        self.records.setdefault(area, {}).setdefault(project_id, {})[record_id] = fields

    def _list_records(self, area: Area) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            pid, denied = await self._project(request)
            if denied is not None:
                return denied
            try:
                limit, offset = int(request.query.get("limit", "10")), int(request.query.get("offset", "0"))
            except ValueError:
                return _bad_param()
            if not 1 <= limit <= 100 or not 0 <= offset <= area.max_offset:
                return _bad_param()
            found = list(reversed(self.records.get(area.name, {}).get(pid, {}).values()))  # newest first
            return _json({area.records_key: found[offset:offset + limit], "count": len(found)})
        return handler

    def _show_record(self, area: Area) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            pid, denied = await self._project(request)
            if denied is not None:
                return denied
            found = self.records.get(area.name, {}).get(pid, {}).get(request.match_info["record_id"])
            return _error(404, "OMS.1009", "No resources found.") if found is None else _json(found)
        return handler

    async def _project(self, request: web.Request) -> tuple[str, web.Response | None]:
        """The project of an OMS API request, or the error answer: credentials, then permission."""
        pid = request.match_info["project_id"]
        denied = await self._authenticate(request, pid)
        if denied is not None:
            return pid, denied
        if pid not in self.projects:
            return pid, _error(403, "OMS.0206", "Insufficient permissions.")
        return pid, None

    async def _list_tasks(self, request: web.Request) -> web.Response:
        pid, denied = await self._project(request)
        if denied is not None:
            return denied
        q = request.query
        try:
            limit = int(q.get("limit", "10"))
            offset = int(q.get("offset", "0"))
            status = int(q["status"]) if "status" in q else None
        except ValueError:
            return _bad_param()
        group_id = q.get("group_id")
        if not 1 <= limit <= 100 or not 0 <= offset <= self.max_offset:
            return _bad_param()
        if status is not None and status not in self.status_filters:
            return _bad_param()
        if group_id is not None and not 1 <= len(group_id) <= 100:
            return _bad_param()
        return _json(self.tasks_page(pid, offset, limit, status, group_id))

    def tasks_page(self, pid: str, offset: int, limit: int, status: int | None = None,
                   group_id: str | None = None) -> dict[str, Any]:
        """A ListTasks answer of valid parameters: the tasks from `offset`, newest first, and `count`."""
        tasks = self.projects[pid]
        ids = self._order[pid]
        if status is None and group_id is None:
            count = len(ids)
            page_ids = ids[max(count - offset - limit, 0):max(count - offset, 0)][::-1]  # newest first
        else:
            matching = self._filtered.get((pid, status, group_id))
            if matching is None:
                matching = self._filtered[(pid, status, group_id)] = [
                    i for i in reversed(ids) if (status is None or tasks[i].get("status") == status)
                    and (group_id is None or tasks[i].get("group_id") == group_id)]
            count = len(matching)
            page_ids = matching[offset:offset + limit]
        return {"tasks": [self._task_json(pid, i) for i in page_ids], "count": count}

    async def _show_task(self, request: web.Request) -> web.Response:
        """ShowTask: one TaskResp; 404 when the project has no such task (deleted, or never there)."""
        pid, denied = await self._project(request)
        if denied is not None:
            return denied
        try:
            task_id = int(request.match_info["record_id"])
        except ValueError:
            return _error(400, "OMS.0054", "Invalid task ID. Enter a valid task ID.")
        if task_id not in self.projects[pid]:
            return _error(404, "OMS.1009", "No resources found.")
        return _json(self._task_json(pid, task_id))

    async def _list_task_groups(self, request: web.Request) -> web.Response:
        """ListTaskGroup: `limit` 1..100, `offset` 0..2147483647, `status` 0..9; newest first."""
        pid, denied = await self._project(request)
        if denied is not None:
            return denied
        q = request.query
        try:
            limit, offset = int(q.get("limit", "10")), int(q.get("offset", "0"))
            status = int(q["status"]) if "status" in q else None
        except ValueError:
            return _bad_param()
        if not 1 <= limit <= 100 or not 0 <= offset <= 2147483647 or not (status is None or 0 <= status <= 9):
            return _bad_param()
        ids = list(reversed(self.groups[pid]))
        if status is None:
            return _json({"count": len(ids), "taskgroups": [self.group_resp(pid, gid)
                                                            for gid in ids[offset:offset + limit]]})
        groups = [g for g in map(lambda gid: self.group_resp(pid, gid), ids) if g["status"] == status]
        return _json({"count": len(groups), "taskgroups": groups[offset:offset + limit]})

    async def _show_task_group(self, request: web.Request) -> web.Response:
        pid, denied = await self._project(request)
        if denied is not None:
            return denied
        group_id = request.match_info["record_id"]
        if group_id not in self.groups[pid]:
            return _error(404, "OMS.1009", "No resources found.")
        return _json(self.group_resp(pid, group_id))

    async def _sync_project(self, request: web.Request) -> tuple[str, web.Response | None]:
        """The project of a sync-task request, or the answer: the API not published here, or refused."""
        if not self.sync_supported:
            return "", _error(404, "APIGW.0101",
                              "The API does not exist or has not been published in the environment")
        return await self._project(request)

    async def _list_sync_tasks(self, request: web.Request) -> web.Response:
        """ListSyncTasks: `limit` 1..100, `offset` 0..10000, `status` SYNCHRONIZING or STOPPED."""
        pid, denied = await self._sync_project(request)
        if denied is not None:
            return denied
        q = request.query
        try:
            limit, offset = int(q.get("limit", "10")), int(q.get("offset", "0"))
        except ValueError:
            return _bad_param()
        status = q.get("status")
        if not 1 <= limit <= 100 or not 0 <= offset <= 10000 or status not in (None, "SYNCHRONIZING", "STOPPED"):
            return _bad_param()
        syncs = [{k: v for k, v in sync.items() if k != "monthly"} for sync in reversed(self.sync_tasks[pid].values())]
        syncs = [sync for sync in syncs if status is None or sync["status"] == status]
        return _json({"tasks": syncs[offset:offset + limit], "count": len(syncs)})

    async def _show_sync_task(self, request: web.Request) -> web.Response:
        """ShowSyncTask: `query_time` (ms, required): the counters of the month (UTC) holding it."""
        pid, denied = await self._sync_project(request)
        if denied is not None:
            return denied
        query_time = request.query.get("query_time", "")
        if not query_time.isdigit() or len(query_time) > 19:
            return _bad_param("Invalid request parameters: query_time.")
        sync = self.sync_tasks[pid].get(request.match_info["record_id"])
        if sync is None:
            return _error(404, "OMS.1009", "No resources found.")
        month = datetime.fromtimestamp(int(query_time) / 1000, UTC).strftime("%Y-%m")
        counters = dict.fromkeys(SYNC_COUNTERS, 0) | sync.get("monthly", {}).get(month, {})
        body = {k: v for k, v in sync.items() if k not in ("monthly", "source_cdn")} | counters
        return _json(body)

    async def _authenticate(self, request: web.Request, project_id: str, *, oms: bool = True) -> web.Response | None:
        """None when the request's credentials are good for `project_id` (for OMS: a token of that project)."""
        token = request.headers.get("X-Auth-Token")
        if token is not None:
            expiry = self.tokens.get(token)
            if expiry is None or self.clock() >= expiry:
                return _unauthorized("Incorrect IAM authentication information: token is invalid or expired")
            scope = self.token_scopes.get(token, project_id)
            if oms and scope != project_id:
                return _unauthorized("Incorrect IAM authentication information: the token is not of this project")
            return None
        auth = request.headers.get("Authorization")
        if auth is None:
            return _unauthorized("Incorrect IAM authentication information: no credentials")
        return await self._verify_signature(request, auth, project_id)

    async def _verify_signature(self, request: web.Request, auth: str, project_id: str) -> web.Response | None:
        algo, _, rest = auth.partition(" ")
        parts = dict(p.strip().partition("=")[::2] for p in rest.split(","))
        ak, signed, sig = parts.get("Access"), parts.get("SignedHeaders"), parts.get("Signature")
        if algo != ALGORITHM or not ak or not signed or not sig:
            return _unauthorized("Incorrect IAM authentication information: bad Authorization header")
        cred = self.credentials.get(ak)
        if cred is None:
            return _unauthorized("Incorrect IAM authentication information: unknown access key")
        date = request.headers.get("X-Sdk-Date", "")
        try:
            when = datetime.strptime(date, DATE_FORMAT).replace(tzinfo=UTC).timestamp()
        except ValueError:
            return _unauthorized("Incorrect IAM authentication information: bad X-Sdk-Date")
        if abs(self.clock() - when) > MAX_SKEW:
            return _unauthorized("Incorrect IAM authentication information: request expired")
        names = signed.split(";")
        if "host" not in names or "x-sdk-date" not in names or any(n not in request.headers for n in names):
            return _unauthorized("Incorrect IAM authentication information: headers not signed")
        if cred.security_token is not None and request.headers.get("X-Security-Token") != cred.security_token:
            return _unauthorized("Incorrect IAM authentication information: bad security token")
        if request.headers.get("X-Project-Id", project_id) != project_id:
            return _unauthorized("Incorrect IAM authentication information: project mismatch")
        headers = {n: request.headers[n] for n in names}
        body = await request.read()
        to_sign = string_to_sign(request.method, request.raw_path.split("?")[0], request.query.items(),
                                 headers, names, body, date)
        if not hmac.compare_digest(signature(cred.sk, to_sign), sig):
            return _unauthorized("Incorrect IAM authentication information: verify aksk signature fail")
        return None

    async def _iam_tokens(self, request: web.Request) -> web.Response:
        try:
            doc = msgspec.json.decode(await request.read())
            ident = doc["auth"]["identity"]
            user = ident["password"]["user"]
            key = (user["domain"]["name"], user["name"])
            password = user["password"]
            scope = doc["auth"]["scope"]
            project = scope["project"] if "project" in scope else None
            if project is None and not isinstance(scope["domain"]["name"], str):
                raise TypeError
            if ident["methods"] != ["password"] or not isinstance(password, str):
                raise TypeError
        except (msgspec.DecodeError, KeyError, TypeError):
            return _json({"error": {"code": 400, "message": "The request body is invalid.", "title": "Bad Request"}},
                         400)
        expected = self.iam_users.get(key)
        if expected is None or not hmac.compare_digest(expected, password):
            return _json({"error_msg": "The username or password is wrong.", "error_code": "IAM.0101"}, 401)
        token = "MII" + secrets.token_urlsafe(96)
        expires = self.clock() + self.token_lifetime
        self.tokens[token] = expires
        self.token_scopes[token] = project.get("id") if project is not None else None
        project = project or {}
        expires_at = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"token": {"expires_at": expires_at, "methods": ["password"],
                          "issued_at": datetime.fromtimestamp(self.clock(), UTC).isoformat(),
                          "project": {"id": project.get("id", ""), "name": project.get("name", "")},
                          "user": {"name": key[1], "domain": {"name": key[0]}}}}
        return _json(body, 201, headers={"X-Subject-Token": token})


# --- realistic task data -------------------------------------------------------------------

_CLOUDS = [("AWS", ["us-east-1", "eu-west-1", "ap-southeast-1"]), ("Aliyun", ["cn-hangzhou", "cn-beijing"]),
           ("Tencent", ["ap-guangzhou", "ap-shanghai"]), ("Azure", ["westeurope", "eastus"]),
           ("Google", ["europe-west4"]), ("Qiniu", ["cn-east-1"]), ("HuaweiCloud", ["cn-north-1"])]
_DST_REGIONS = ["cn-north-4", "cn-east-3", "cn-south-1", "ap-southeast-3"]
_WORDS = ["logs", "media", "backup", "archive", "images", "datalake", "assets", "reports", "video", "ml-data"]
_ODD_NAMES = ['迁移任务-日志', 'quote "q" and \\slash', "line\nbreak", "emoji 🚚📦", "tab\there"]
_ERRORS = [("OMS.1201", "Failed to list source objects: access denied."),
           ("OMS.1105", "The destination bucket does not exist."),
           ("OMS.1301", "Network between source and destination is unstable.")]
GIB = 1024 ** 3


def make_task(rng: random.Random, task_id: int, now_ms: int, *, status: int | None = None,
              group_id: str = "") -> dict[str, Any]:
    """One TaskResp as OMS returns it, with numbers consistent with its status."""
    cloud, regions = rng.choice(_CLOUDS)
    word = rng.choice(_WORDS)
    name = rng.choice(_ODD_NAMES) if rng.random() < 0.02 else f"{cloud.lower()}-{word}-{task_id}"
    if status is None:
        status = rng.choices([1, 2, 3, 4, 5, 6, 7], weights=[8, 20, 3, 6, 60, 2, 1])[0]
    total_num = rng.randint(1, 2_000_000)
    total_size = rng.randint(1, 5000) * GIB // rng.choice([1, 10, 100])
    progress = {1: 0.0, 5: 1.0}.get(status, round(rng.uniform(0.01, 0.99), 4))
    done = int(total_num * progress)
    failed = rng.randint(1, max(1, done // 100)) if status == 4 else (rng.randint(0, 20) if rng.random() < 0.2 else 0)
    skipped = rng.randint(0, done // 10) if done else 0
    succeeded = max(done - failed - skipped, 0)
    complete_size = int(total_size * progress)
    speed = rng.randint(5, 200) * 1024 * 1024 if status in (2, 6) else 0
    elapsed_ms = 0 if status == 1 else rng.randint(60, 86400 * 3) * 1000
    left_ms = int((total_size - complete_size) / speed * 1000) if speed else 0
    task: dict[str, Any] = {
        "id": task_id, "name": name, "description": "",
        "status": status, "progress": progress,
        "task_type": rng.choice(["object", "prefix", "list", "url_list"]),
        "group_type": "GROUP_TASK" if group_id else "NORMAL_TASK", "group_id": group_id,
        "task_priority": rng.choice(["HIGH", "MEDIUM", "MEDIUM", "LOW"]),
        "src_node": {"cloud_type": cloud, "region": rng.choice(regions), "bucket": f"src-{word}-{task_id % 97}",
                     "object_key": [f"{word}/"]},
        "dst_node": {"region": rng.choice(_DST_REGIONS), "bucket": f"obs-{word}", "save_prefix": ""},
        "total_num": total_num, "successful_num": succeeded, "failed_num": failed, "skipped_num": skipped,
        "total_size": total_size, "complete_size": complete_size, "real_size": int(complete_size * 0.95),
        "migrate_speed": speed, "start_time": 0 if status == 1 else now_ms - elapsed_ms,
        "total_time": elapsed_ms, "left_time": left_ms, "migrate_since": 0,
        "is_query_over": status != 1, "enable_kms": False, "enable_restore": False,
        "enable_failed_object_recording": True, "enable_metadata_migration": False,
        "enable_requester_pays": False, "object_overwrite_mode": "SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE",
        "dst_storage_policy": "STANDARD", "consistency_check": "size_last_modified",
        "error_reason": {"error_code": "", "error_msg": ""},
        "failed_object_record": {"result": True, "list_file_key": "", "error_code": ""},
        "smn_info": {"notify_result": True, "notify_error_message": "", "topic_name": ""},
        "success_record_error_reason": "", "skip_record_error_reason": "",
        "bandwidth_policy": [],
    }
    if status == 4:
        code, msg = rng.choice(_ERRORS)
        task["error_reason"] = {"error_code": code, "error_msg": msg}
    if rng.random() < 0.3:
        task["bandwidth_policy"] = [
            {"start": "00:00", "end": "08:00", "max_bandwidth": 200 * 1024 * 1024},
            {"start": "08:00", "end": "23:59", "max_bandwidth": rng.choice([20, 50, 100]) * 1024 * 1024}]
    return task


def make_tasks(n: int, *, seed: int = 1, now_ms: int | None = None, first_id: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    groups = [f"{rng.getrandbits(128):032x}"[:32] for _ in range(max(1, n // 50))]
    out = []
    for i in range(n):
        group = rng.choice(groups) if rng.random() < 0.3 else ""
        # Older tasks (lower ids) are more likely to be finished.
        out.append(make_task(rng, first_id + i, now_ms - (n - i) * 60_000, group_id=group))
    return out


def _month(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m")


def add_groups_and_syncs(sim: Simulator, project_id: str, *, seed: int = 11, now_ms: int | None = None) -> None:
    """What the demo shows beside its tasks: a task group still creating its tasks, one whose
    tasks could not be created, and two synchronization tasks (one stopped) with their own
    SYNC_TASK tasks and counters for this month."""
    rng = random.Random(seed)
    now_ms = int(sim.clock() * 1000) if now_ms is None else now_ms
    first = max(sim.projects[project_id], default=0) + 1
    creating = "3f0c9a6e5b7d4c21a8e90f1b2c3d4e5f"
    # Tasks are created one by one until the planned 24; the planned totals are the group's.
    sim.put_group(project_id, {
        "group_id": creating, "status": 1, "task_type": "PREFIX", "total_task_num": 24,
        "total_num": 4_800_000, "total_size": 24 * 400 * GIB, "start_time": now_ms - 600_000, "total_time": 600_000,
        "src_node": {"cloud_type": "AWS", "region": "us-east-1", "bucket": "datalake-raw", "object_key": ["raw/"]},
        "dst_node": {"region": "cn-north-4", "bucket": "obs-datalake", "save_prefix": ""}})
    for i in range(6):
        sim.put_task(project_id, _group_member(rng, first + i, now_ms, creating))
    failed = "5e6f7a8b9c0d4e1f8a2b3c4d5e6f7a8b"  # its tasks ran; one failed: migration failed
    for i, code in enumerate((5, 5, 4)):
        task = _group_member(rng, first + 6 + i, now_ms, failed)
        task.update(status=code, progress=1.0 if code == 5 else 0.62, migrate_speed=0, left_time=0)
        sim.put_task(project_id, task)
    sim.groups[project_id][failed].update(
        status=5, error_reason={"error_code": "TRF.0159", "error_msg": "The source object storage throttled the "
                                                                        "migration."})
    sim.put_group(project_id, {
        "group_id": "9d8e7f6a5b4c43d2a1f0e9d8c7b6a5f4", "status": 4, "task_type": "LIST",
        "total_task_num": 0, "total_num": 0, "total_size": 0, "start_time": now_ms - 7_200_000, "total_time": 35_000,
        "src_node": {"cloud_type": "ALIYUN", "region": "cn-hangzhou", "bucket": "media-archive", "object_key": []},
        "dst_node": {"region": "cn-east-3", "bucket": "obs-media", "save_prefix": "archive/"},
        "error_reason": {"error_code": "TRF.0013", "error_msg": "The object list file is missing or unreadable."}})
    month = _month(now_ms)
    for n, (sid, state, cloud, region, bucket) in enumerate((
            ("4fb05cd2-c94e-44e4-a07f-e65a2f01ebcb", "SYNCHRONIZING", "AWS", "eu-west-1", "orders-events"),
            ("a2c4e6f8-1b3d-4f5a-9c7e-0d2f4b6d8e1a", "STOPPED", "Tencent", "ap-guangzhou", "app-uploads"))):
        sim.put_sync_task(project_id, {
            "sync_task_id": sid, "src_cloud_type": cloud, "src_region": region, "src_bucket": bucket,
            "dst_region": "cn-north-4", "dst_bucket": f"obs-{bucket}",
            "status": state, "create_time": now_ms - 40 * 86_400_000, "last_start_time": now_ms - 3 * 86_400_000,
            "monthly": {month: dict(zip(SYNC_COUNTERS, (v // (n + 1) for v in (
                120_000, 118_900, 40, 1_060, 310 * GIB))))}})
        for i in range(2):  # the migration tasks a sync task runs (group_type SYNC_TASK)
            task = make_task(rng, first + 9 + 2 * n + i, now_ms, status=5)
            task.update(group_type="SYNC_TASK", group_id=sid)
            sim.put_task(project_id, task)


def _group_member(rng: random.Random, task_id: int, now_ms: int, group_id: str) -> dict[str, Any]:
    task = make_task(rng, task_id, now_ms, status=rng.choice([1, 1, 2]), group_id=group_id)
    task.update(total_num=200_000, total_size=400 * GIB)
    return task


class Evolution:
    """Moves a project forward in time, for the demo: task progress, failures, new tasks; groups
    creating their tasks; sync tasks counting this month's objects."""

    def __init__(self, sim: Simulator, project_id: str, seed: int = 7) -> None:
        self._sim = sim
        self._pid = project_id
        self._rng = random.Random(seed)

    def advance(self, seconds: float) -> None:
        rng, tasks = self._rng, self._sim.projects[self._pid]
        now_ms = int(self._sim.clock() * 1000)
        for task in list(tasks.values()):
            status = task["status"]
            if status == 1 and rng.random() < 0.02 * seconds:
                self._patch(task, status=2, start_time=now_ms, migrate_speed=rng.randint(5, 200) * 1024 * 1024)
            elif status in (2, 6):
                self._migrate(task, seconds, now_ms)
            elif status == 7:
                self._patch(task, status=3, migrate_speed=0)
        if rng.random() < 0.05 * seconds:
            new_id = max(tasks, default=0) + 1
            self._sim.put_task(self._pid, make_task(rng, new_id, now_ms, status=1))
        for gid, group in self._sim.groups[self._pid].items():
            if group.get("status") == 1 and rng.random() < 0.1 * seconds:  # creating: one more task
                created = sum(1 for t in tasks.values() if t.get("group_id") == gid)
                self._sim.put_task(self._pid, _group_member(rng, max(tasks, default=0) + 1, now_ms, gid))
                if created + 1 >= group.get("total_task_num", 0):
                    del group["status"]  # every task created: the group's state follows its tasks
        for sync in self._sim.sync_tasks[self._pid].values():
            if sync["status"] != "SYNCHRONIZING":
                continue
            counts = sync.setdefault("monthly", {}).setdefault(_month(now_ms), dict.fromkeys(SYNC_COUNTERS, 0))
            requested = rng.randint(0, int(40 * seconds))
            failed = rng.randint(0, 2) if rng.random() < 0.1 * seconds else 0
            skipped = rng.randint(0, requested // 20)
            counts["monthly_acceptance_request"] += requested
            counts["monthly_failure_object"] += failed
            counts["monthly_skip_object"] += skipped
            counts["monthly_success_object"] += max(requested - failed - skipped, 0)
            counts["monthly_size"] += requested * rng.randint(10_000, 4_000_000)

    def _patch(self, task: dict[str, Any], **fields: Any) -> None:
        self._sim.patch_task(self._pid, task["id"], **fields)

    def _migrate(self, task: dict[str, Any], seconds: float, now_ms: int) -> None:
        rng = self._rng
        if rng.random() < 0.002 * seconds:
            code, msg = rng.choice(_ERRORS)
            self._patch(task, status=4, migrate_speed=0, left_time=0,
                        error_reason={"error_code": code, "error_msg": msg})
            return
        speed = max(int(task["migrate_speed"] * rng.uniform(0.8, 1.2)), 1024 * 1024)
        total, done = task["total_size"], task["complete_size"]
        done = min(total, done + int(speed * seconds))
        progress = done / total if total else 1.0
        objects = int(task["total_num"] * progress)
        failed = task["failed_num"] + (rng.randint(1, 5) if rng.random() < 0.05 * seconds else 0)
        self._patch(
            task, failed_num=failed,
            complete_size=done, real_size=int(done * 0.95), progress=round(progress, 4),
            successful_num=max(objects - failed - task["skipped_num"], 0),
            migrate_speed=speed, total_time=task["total_time"] + int(seconds * 1000),
            left_time=int((total - done) / speed * 1000))
        if done >= total:
            self._patch(task, status=5, progress=1, migrate_speed=0, left_time=0)


def clone(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return copy.deepcopy(tasks)
