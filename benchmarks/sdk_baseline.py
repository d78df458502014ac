"""Today's alternative to the exporter, for the benchmark to beat.

The official SDK (`huaweicloudsdkoms` OmsClient + ListTasksRequest, AK/SK signing) pages
through the tasks one page of 100 after the other; the SDK's TaskResp objects become the
exporter's task records, the exporter's reference collector (prometheus-client metric
families) turns them into the same families, and `generate_latest` writes the text format.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkoms.v2 import ListTasksRequest, OmsClient
from prometheus_client import CollectorRegistry, generate_latest

from oms_exporter.collector import SnapshotCollector
from oms_exporter.listing import Listing, complete_tasks
from oms_exporter.model import Task, parse_task
from oms_exporter.settings import Target
from oms_exporter.snapshot import SeriesPolicy


def _task(t: Any) -> Task:
    """The exporter's record of one SDK TaskResp: its fields under their wire names, read as the exporter reads them."""
    return parse_task(msgspec.json.encode(t.to_dict()))


def make_client(endpoint: str, project_id: str, ak: str, sk: str) -> OmsClient:
    config = HttpConfig.get_default_config()
    config.ignore_ssl_verification = True
    return (OmsClient.new_builder().with_http_config(config)
            .with_credentials(BasicCredentials(ak, sk, project_id)).with_endpoints([endpoint]).build())


def list_all(client: OmsClient) -> list[Any]:
    tasks: list[Any] = []
    offset = 0
    while True:
        resp = client.list_tasks(ListTasksRequest(limit=100, offset=offset))
        tasks += resp.tasks or []
        offset += 100
        if offset >= (resp.count or 0):
            return tasks


def scrape_once(endpoint: str, project_id: str, ak: str, sk: str, client: OmsClient | None = None) -> bytes:
    """One baseline scrape: list every task with the SDK, then encode with prometheus-client."""
    tasks = list_all(client or make_client(endpoint, project_id, ak, sk))
    target = Target.model_validate({"name": "sdk", "project_id": project_id, "region": "cn-north-4",
                                     "auth_token": "unused"})
    registry = CollectorRegistry(auto_describe=False)
    records = sorted(map(_task, tasks), key=lambda t: t.id)
    registry.register(SnapshotCollector([Listing(target, time.time(), {"tasks": complete_tasks(records)})],
                                        SeriesPolicy(finished_task_max_age=0)))
    return generate_latest(registry)
