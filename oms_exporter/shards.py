"""Shards: which of N replicas serves a project, decided the way Prometheus' `hashmod` decides it.

With `--shard.count N`, replica `--shard.index I` serves only the targets (configured and
discovered) whose `project_id` hashes to I. The hash is Prometheus' `hashmod` relabelling of
the value: the last 8 bytes of its MD5, read big-endian, modulo N (relabel.go). So the
exporter's own shards and the documented alternative, N Prometheus servers each keeping
`hashmod` of `project_id` over the exporter's /discovery, split the projects the same way;
`tests/test_e2e_shards.py` checks that against a real Prometheus. MD5 is not a secret here:
any stable, evenly spread function would do, and this one is stable across processes,
restarts and platforms (unlike `hash()`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_ORDINAL = re.compile(r"-(\d+)$")


def shard_of(project_id: str, count: int) -> int:
    """The shard (0..count-1) that serves `project_id`: Prometheus' `hashmod` of it, modulus `count`."""
    digest = hashlib.md5(project_id.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % count


def ordinal(hostname: str) -> int:
    """The ordinal of a StatefulSet pod from its host name (`oms-exporter-2` -> 2, also as the first
    label of a fully qualified name); ValueError when the name ends in none."""
    m = _ORDINAL.search(hostname.split(".", 1)[0])
    if m is None or len(m.group(1)) > 6:
        raise ValueError(f"auto: the host name {hostname!r} does not end in a StatefulSet pod's ordinal "
                         "(as oms-exporter-2 does): give the index")
    return int(m.group(1))


@dataclass(frozen=True, slots=True)
class Shard:
    """This replica's shard: `index` of `count` (0 of 1: the only one, which serves every target)."""

    index: int = 0
    count: int = 1

    def owner(self, project_id: str) -> int:
        return 0 if self.count == 1 else shard_of(project_id, self.count)

    def owns(self, project_id: str) -> bool:
        return self.owner(project_id) == self.index
