"""The helpers of tests/conftest.py that other tests trust: `parse_metrics` gives what
prometheus_client's parser gives for the whole text, however the text is cut into pieces."""

from __future__ import annotations

import random

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PROJECT, Exporter, Samples, parse_metrics
from tests.standin import StandIn


def whole(text: str) -> Samples:
    """The plain way: the whole text through prometheus_client's parser at once."""
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


async def test_a_scrape_and_the_next_ones_parse_as_a_whole(sim: StandIn, exporter: Exporter) -> None:
    client = await exporter(finished_task_max_age=0)
    rng = random.Random(1)
    for _ in range(3):
        text = await (await client.get("/metrics")).text()
        assert parse_metrics(text) == whole(text) == parse_metrics(text)  # the second from the pieces remembered
        for tid in rng.sample(sorted(sim.projects[PROJECT]), 20):
            sim.patch_task(PROJECT, tid, status=rng.choice((1, 2, 3, 4, 5, 6, 7)), progress=rng.random())
        sim.remove_task(PROJECT, rng.choice(sorted(sim.projects[PROJECT])))


TEXTS = {
    "counter without _total": "# HELP c a counter\n# TYPE c counter\nc{a=\"1\"} 1\nc{a=\"2\"} 2\n",
    "counter with _total": "# HELP c a counter\n# TYPE c counter\nc_total{a=\"1\"} 1\n",
    "histogram": "# HELP h x\n# TYPE h histogram\n" + "".join(
        f'h_bucket{{le="{b}"}} {i}\n' for i, b in enumerate(["1.0", "2.0", "+Inf"])) + "h_sum 3\nh_count 2\n",
    "no header": "a 1\nb{x=\"y\"} 2\n",
    "a sample outside its family": "# HELP a x\n# TYPE a gauge\na 1\nb 2\na{k=\"v\"} 3\n",
    "a family without samples": "# HELP a x\n# TYPE a gauge\n# HELP b y\n# TYPE b counter\nb_total 1\n",
    "a family named twice": ("# HELP a x\n# TYPE a counter\na 1\n# HELP b x\nb 1\n"
                             "# HELP a x\n# TYPE a gauge\na{k=\"v\"} 2\n"),
    "comments and blank lines": "# a comment\n\n# HELP a x\n# TYPE a gauge\n\na 1\n# another\na{k=\"v\"} 2\n",
    "escapes": '# HELP e a \\\\ b\n# TYPE e gauge\ne{k="a\\"b\\\\c\\nd"} 1\n',
    "many lines": "# HELP m x\n# TYPE m gauge\n" + "".join(f'm{{i="{i}"}} {i}\n' for i in range(1000)),
}


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_texts_parse_as_a_whole(text: str) -> None:
    assert parse_metrics(text) == whole(text)
    assert parse_metrics(text) == whole(text)


@pytest.mark.parametrize("text", ["# HELP a x\n# TYPE a\na 1\n", "# HELP a x\n# TYPE a gauge\na{ 1\n",
                                  "# HELP a x\n# TYPE a gauge\na 1\n# TYPE b\n"])
def test_what_the_parser_refuses_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        whole(text)
    with pytest.raises(ValueError):
        parse_metrics(text)


def test_a_duplicate_series_fails() -> None:
    with pytest.raises(AssertionError, match="duplicate series"):
        parse_metrics("# HELP a x\n# TYPE a gauge\na{k=\"v\"} 1\na{k=\"v\"} 2\n")
