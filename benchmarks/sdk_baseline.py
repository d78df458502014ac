"""Today's alternative to the exporter, for the benchmark to beat.

The official SDK (`huaweicloudsdkoms` OmsClient + ListTasksRequest, AK/SK signing) pages
through the tasks one page of 100 after the other; a prometheus-client custom collector
turns the SDK's TaskResp objects into the same metric families as the exporter, and
`generate_latest` writes the text format.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from huaweicloudsdkcore.auth.credentials import BasicCredentials  # type: ignore[import-untyped]
from huaweicloudsdkcore.http.http_config import HttpConfig  # type: ignore[import-untyped]
from huaweicloudsdkoms.v2 import ListTasksRequest, OmsClient  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from oms_exporter import metrics as m
from oms_exporter.model import STATUS_NAMES

# TaskResp attribute of each per-task gauge (the SDK names them like the wire format).
_SDK_ATTR = {"start_time_ms": "start_time", "total_time_ms": "total_time", "left_time_ms": "left_time"}
_INFO = {"name": lambda t: t.name, "group_id": lambda t: t.group_id, "group_type": lambda t: t.group_type,
         "task_type": lambda t: t.task_type, "priority": lambda t: t.task_priority,
         "src_cloud": lambda t: t.src_node and t.src_node.cloud_type,
         "src_region": lambda t: t.src_node and t.src_node.region,
         "src_bucket": lambda t: t.src_node and t.src_node.bucket,
         "dst_region": lambda t: t.dst_node and t.dst_node.region,
         "dst_bucket": lambda t: t.dst_node and t.dst_node.bucket}


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


class SdkCollector(Collector):
    def __init__(self, project_id: str, tasks: list[Any]) -> None:
        self.pid, self.tasks = project_id, tasks

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pid = self.pid
        up = GaugeMetricFamily(m.UP, m.UP_HELP, labels=["project_id"])
        up.add_metric([pid], 1)
        counts = GaugeMetricFamily(m.TASKS, m.TASKS_HELP, labels=["project_id", "status"])
        for code, name in STATUS_NAMES.items():
            counts.add_metric([pid, name], sum(1 for t in self.tasks if t.status == code))
        yield up
        yield counts
        info = GaugeMetricFamily(m.TASK_INFO, m.TASK_INFO_HELP,
                                 labels=list(m.TASK_LABELS) + [n for n, _ in m.TASK_INFO_LABELS])
        status = GaugeMetricFamily(m.TASK_STATUS, m.TASK_STATUS_HELP, labels=["project_id", "task_id", "status"])
        status_code = GaugeMetricFamily(m.TASK_STATUS_CODE, m.TASK_STATUS_CODE_HELP, labels=list(m.TASK_LABELS))
        for t in self.tasks:
            tid = str(t.id)
            info.add_metric([pid, tid] + [_INFO[n](t) or "" for n, _ in m.TASK_INFO_LABELS], 1)
            if t.status is not None:
                for c, name in STATUS_NAMES.items():
                    status.add_metric([pid, tid, name], 1 if c == t.status else 0)
                status_code.add_metric([pid, tid], t.status)
        yield info
        yield status
        yield status_code
        for g in m.TASK_GAUGES:
            fam = GaugeMetricFamily(g.name, g.help, labels=list(m.TASK_LABELS))
            attr = _SDK_ATTR.get(g.attr, g.attr)
            for t in self.tasks:
                v = getattr(t, attr)
                if v is not None:
                    fam.add_metric([pid, str(t.id)], v * g.scale)
            yield fam
        bw = GaugeMetricFamily(m.TASK_BANDWIDTH, m.TASK_BANDWIDTH_HELP, labels=list(m.TASK_BANDWIDTH_LABELS))
        err = GaugeMetricFamily(m.TASK_ERROR_INFO, m.TASK_ERROR_INFO_HELP, labels=list(m.TASK_ERROR_INFO_LABELS))
        for t in self.tasks:
            for w in t.bandwidth_policy or []:
                if w.max_bandwidth is not None:
                    bw.add_metric([pid, str(t.id), w.start or "", w.end or ""], w.max_bandwidth)
            e = t.error_reason
            if e is not None and (e.error_code or e.error_msg):
                err.add_metric([pid, str(t.id), e.error_code or "", e.error_msg or ""], 1)
        yield bw
        yield err


def scrape_once(endpoint: str, project_id: str, ak: str, sk: str, client: OmsClient | None = None) -> bytes:
    """One baseline scrape: list every task with the SDK, then encode with prometheus-client."""
    tasks = list_all(client or make_client(endpoint, project_id, ak, sk))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SdkCollector(project_id, tasks))
    return generate_latest(registry)
