import msgspec
import pytest

from oms_exporter.model import MalformedRecord, RecordParser
from oms_exporter.model import parse_task as parse_json


def parse_task(doc):
    return parse_json(msgspec.json.encode(doc))


def test_full_record_from_the_reference_example():
    t = parse_task({
        "id": 12, "name": "n", "status": 2, "progress": 1, "task_type": "list", "group_type": "GROUP_TASK",
        "group_id": "g", "task_priority": "HIGH", "migrate_speed": 5, "total_num": 10, "successful_num": 7,
        "failed_num": 1, "skipped_num": 2, "total_size": 100, "complete_size": 50, "real_size": 40,
        "start_time": 1700000000000, "total_time": 1500, "left_time": 2500,
        "src_node": {"cloud_type": "AWS", "region": "us-east-1", "bucket": "s", "app_id": "x"},
        "dst_node": {"region": "cn-north-4", "bucket": "d"},
        "bandwidth_policy": [{"start": "00:00", "end": "23:59", "max_bandwidth": 1048576}],
        "error_reason": {"error_code": "OMS.1", "error_msg": "boom"},
        "enable_kms": True, "some_future_field": {"nested": [1, 2]},
    })
    assert (t.id, t.status, t.progress, t.src.cloud_type, t.dst.bucket) == (12, 2, 1, "AWS", "d")
    assert t.bandwidth[0].max_bandwidth == 1048576
    assert (t.error_code, t.error_msg) == ("OMS.1", "boom")


def test_absent_and_null_fields_stay_none_not_zero():
    t = parse_task({"id": 1, "progress": None, "src_node": None})
    assert t.progress is None and t.total_num is None and t.status is None
    assert t.src.cloud_type == "" and t.name == "" and t.bandwidth == ()


def test_error_reason_as_empty_string_is_no_error():
    # The reference: "The value is an empty string if the task is not in the Failed state."
    assert parse_task({"id": 1, "error_reason": ""}).error_msg == ""
    assert parse_task({"id": 1, "error_reason": "plain text"}).error_msg == "plain text"


@pytest.mark.parametrize("record", [
    {"id": "1"}, {}, {"id": -1}, {"id": True}, {"id": 1, "progress": "0.5"}, {"id": 1, "total_num": True},
    {"id": 1, "status": "2"}, {"id": 1, "src_node": "aws"}, {"id": 1, "name": 5},
    {"id": 1, "bandwidth_policy": {}}, {"id": 1, "bandwidth_policy": [1]}, {"id": 1, "error_reason": 3}, [], None,
])
def test_malformed_records_raise(record):
    with pytest.raises(MalformedRecord):
        parse_task(record)


def test_finished_at():
    assert parse_task({"id": 1, "status": 5, "start_time": 1000, "total_time": 500}).finished_at_ms() == 1500
    assert parse_task({"id": 1, "status": 2, "start_time": 1000}).finished_at_ms() is None


def test_finished_task_without_start_time_is_not_from_1970():
    # start_time 0 means "never started": it must not age the task out of the series.
    assert parse_task({"id": 1, "status": 4, "start_time": 0, "total_time": 0}).finished_at_ms() is None


def test_bandwidth_windows_without_limit_or_repeated_are_dropped():
    t = parse_task({"id": 1, "bandwidth_policy": [
        {"start": "00:00", "end": "08:00", "max_bandwidth": 5}, {"start": "00:00", "end": "08:00", "max_bandwidth": 7},
        {"start": "08:00", "end": "09:00"}, {"start": "09:00", "end": "10:00", "max_bandwidth": 9}]})
    assert [(w.start, w.end, w.max_bandwidth) for w in t.bandwidth] == [("00:00", "08:00", 5), ("09:00", "10:00", 9)]


def test_parser_reuses_records_and_counts_malformed_ones_once():
    parser = RecordParser(parse_json)
    one, two = b'{"id": 1, "status": 2, "progress": 0.5}', b'{"id": 2, "status": 5}'
    parser.begin()
    tasks = parser.parse_all([msgspec.Raw(one), msgspec.Raw(two), msgspec.Raw(b'{"id": "x"}')])
    again = parser.parse_all([msgspec.Raw(one), msgspec.Raw(b'{"id": "x"}')])  # a second pass of the same listing
    parser.end()
    assert [t.id for t in tasks] == [1, 2] and len(parser.malformed) == 1
    assert again[0] is tasks[0]
    parser.begin()
    moved = parser.parse_all([msgspec.Raw(one), msgspec.Raw(b'{"id": 2, "status": 4}')])
    parser.end()
    assert moved[0] is tasks[0] and moved[1].status == 4


def test_the_parser_remembers_the_latest_record_of_each_id_and_forgets_what_is_gone():
    parser = RecordParser(parse_json)
    one = msgspec.Raw(b'{"id": 1, "status": 2}')
    parser.begin()
    first = parser.parse_all([one, msgspec.Raw(b'{"id": 2}')])[0]
    parser.end()
    assert set(parser.ids()) == {1, 2}
    parser.begin()
    changed = parser.parse_all([msgspec.Raw(b'{"id": 1, "status": 5}')])[0]
    parser.end()
    assert changed.status == 5 and len(parser._records) == 2  # the old record of 1 is replaced
    parser.forget([2])
    assert set(parser.ids()) == {1}
    # A listing that fails forgets the ids it saw first; the known ones stay.
    parser.begin()
    parser.parse_all([msgspec.Raw(b'{"id": %d}' % i) for i in range(3, 1000)] + [one])
    parser.end(ok=False)
    assert set(parser.ids()) == {1} and len(parser._records) == 1
    parser.begin()
    assert parser.parse_all([one])[0] is not first  # 1 moved on to status 1's record, then back
