"""Today's alternative to the exporter, for the benchmark to beat.

The official SDK (`huaweicloudsdkoms` OmsClient + ListTasksRequest, AK/SK signing) pages
through the tasks one page of 100 after the other; the SDK's TaskResp objects become the
exporter's task records, the exporter's reference collector (prometheus-client metric
families) turns them into the same families, and `generate_latest` writes the text format.
"""

from __future__ import annotations

import time
from typing import Any

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkoms.v2 import ListTasksRequest, OmsClient
from prometheus_client import CollectorRegistry, generate_latest

from oms_exporter.collector import SeriesPolicy, SnapshotCollector
from oms_exporter.lister import Listing
from oms_exporter.model import BandwidthWindow, Task
from oms_exporter.settings import Target


def _task(t: Any) -> Task:
    """The exporter's record of one SDK TaskResp (the same fields the exporter reads)."""
    src, dst, err = t.src_node, t.dst_node, t.error_reason
    return Task(
        id=t.id, name=t.name or "", group_id=t.group_id or "", group_type=t.group_type or "",
        task_type=t.task_type or "", priority=t.task_priority or "",
        src_cloud=(src and src.cloud_type) or "", src_region=(src and src.region) or "",
        src_bucket=(src and src.bucket) or "", dst_region=(dst and dst.region) or "",
        dst_bucket=(dst and dst.bucket) or "",
        status=t.status, progress=t.progress, migrate_speed=t.migrate_speed, total_num=t.total_num,
        successful_num=t.successful_num, failed_num=t.failed_num, skipped_num=t.skipped_num,
        total_size=t.total_size, complete_size=t.complete_size, real_size=t.real_size,
        start_time_ms=t.start_time, total_time_ms=t.total_time, left_time_ms=t.left_time,
        bandwidth=tuple(BandwidthWindow(w.start or "", w.end or "", w.max_bandwidth) for w in t.bandwidth_policy or ()),
        error_code=(err and err.error_code) or "", error_msg=(err and err.error_msg) or "")


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
    registry.register(SnapshotCollector([Listing.of(target, time.time(), map(_task, tasks))],
                                        SeriesPolicy(finished_task_max_age=0)))
    return generate_latest(registry)
