"""The sandbox wire codec: round trips in every mode, the hand-made Frame equals protobuf's, bad input fails."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
from typing import Any

import pytest

from plugin_pool._proto.v1 import worker_pb2 as pb
from plugin_pool.sandbox import _codec as codec


@pytest.mark.parametrize("data", [b"", b"x", b"y" * 127, b"z" * 128, b"w" * 70_000])
def test_the_hand_made_frame_is_protobufs_wire_format(data: bytes) -> None:
    assert codec.frame(data) == pb.Frame(data=data).SerializeToString()
    assert bytes(codec.unframe(pb.Frame(data=data).SerializeToString())) == data


@pytest.mark.parametrize("raw", [b"\x12\x01x", b"\x0a\x05abc", b"\x0a\x80", b"\x0a\x01ab"])
def test_a_malformed_frame_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        codec.unframe(raw)


@pytest.mark.parametrize("payload", [None, 0, "text", {"a": [1, 2.5, None]}, b"\x00raw\xff", b""])
def test_a_call_round_trips(payload: Any) -> None:
    capability, decoded = codec.decode_call(memoryview(codec.encode_call("scan", payload)))
    assert (capability, decoded) == ("scan", payload)
    assert type(decoded) is type(payload)


def test_results_and_errors_round_trip() -> None:
    assert codec.decode_reply(memoryview(codec.encode_result({"k": [1]}))) == (True, {"k": [1]})
    assert codec.decode_reply(memoryview(codec.encode_result(b"\x01"))) == (True, b"\x01")
    error = codec.encode_error("plugin_raised", "ValueError", "boom")
    assert codec.decode_reply(memoryview(error)) == (False, ("plugin_raised", "ValueError", "boom"))


@pytest.mark.parametrize(
    "payloads",
    [
        ["a", {"b": 1}, None],  # one JSON array
        [b"x" * 10, b"", b"\x00" * 3],  # a blob table
        ["a", b"b", 3],  # framed items
        [],
    ],
)
def test_a_batch_round_trips_in_every_mode(payloads: list[Any]) -> None:
    capability, decoded = codec.decode_batch(memoryview(codec.encode_batch("echo", payloads)))
    assert (capability, decoded) == ("echo", payloads)


@pytest.mark.parametrize(
    "outcomes",
    [
        [(True, 1), (False, ("plugin_raised", "KeyError", "'x'")), (True, "s")],  # JSON array
        [(True, b"a"), (True, b"")],  # blob table
        [(True, b"a"), (False, ("resource_limit", "memory", "RLIMIT_DATA")), (True, {"x": 1})],  # framed
    ],
)
def test_batch_outcomes_round_trip_in_every_mode(outcomes: list[codec.Outcome]) -> None:
    assert codec.decode_batch_results(memoryview(codec.encode_batch_results(outcomes))) == outcomes


def test_a_whole_batch_error_decodes_to_one_error() -> None:
    reply = codec.encode_error("reply_too_large", "", "too big")
    assert codec.decode_batch_results(memoryview(reply)) == [(False, ("reply_too_large", "", "too big"))]


@pytest.mark.parametrize(
    "reply",
    [
        b"Q",
        b"J{nope",
        b'E{"kind": "pwned"}',
        b"E[]",
        b"A[[2, 1]]",
        b"A{}",
        b"B\x00\x00\x00\x05",
        b"F" + b"J\x00\x00\x00\x09{}",
    ],
)
def test_a_forged_reply_is_refused_with_value_error(reply: bytes) -> None:
    with pytest.raises(ValueError):
        decode = codec.decode_reply if reply[:1] in (b"Q", b"J", b"E") else codec.decode_batch_results
        decode(memoryview(reply))


def test_a_payload_json_cannot_hold_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        codec.encode_call("scan", {1, 2})
    with pytest.raises(TypeError):
        codec.encode_batch("scan", [object()])


# -- non-finite floats: refused, never sent as null -----------------------------------------------------------


@dataclasses.dataclass
class _Finding:
    rule: str
    weight: float


class _Level(enum.Enum):
    UNKNOWN = math.nan


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (math.nan, "payload"),
        ({"score": math.inf}, "payload['score']"),
        ([0, [1, -math.inf]], "payload[1][1]"),
        ((1.0, {"k": (math.nan,)}), "payload[1]['k'][0]"),
        ([_Level.UNKNOWN], "payload[0].value"),
    ],
)
def test_non_finite_floats_are_refused_with_their_place(value: Any, where: str) -> None:
    with pytest.raises(TypeError) as caught:
        codec.encode_call("scan", value)
    assert str(caught.value).startswith(f"{where} is not a finite number")
    assert codec.find_non_finite(value, "payload") == where


@pytest.mark.parametrize(
    "value",
    [
        _Finding("r", 1.0),
        datetime.datetime(2026, 12, 6, 12, 0),
        datetime.date(2026, 12, 6),
        {"at": datetime.time(1, 2)},
    ],
)
def test_values_orjson_would_turn_into_another_type_are_refused(value: Any) -> None:
    # In-process the caller gets the object; through the sandbox it would get a dict or a string instead.
    with pytest.raises(TypeError, match="not JSON serializable"):
        codec.encode_call("scan", value)
    with pytest.raises(TypeError, match="not JSON serializable"):
        codec.encode_result(value)


def test_null_in_the_output_alone_is_no_reason_to_refuse() -> None:
    # The walk runs only when the output holds "null"; a real None or the text "null" must still pass.
    for value in (None, {"a": None}, "null", ["null", 1.5, None]):
        assert codec.decode_call(memoryview(codec.encode_call("scan", value))) == ("scan", value)
    assert codec.find_non_finite({"a": [1.0, 2.5, "nan"]}) is None


def test_batches_and_results_refuse_non_finite_floats_too() -> None:
    with pytest.raises(TypeError, match=r"payloads\[1\]\['x'\] is not a finite number"):
        codec.encode_batch("scan", [{"x": 1.0}, {"x": math.nan}])
    with pytest.raises(TypeError, match=r"payloads\[2\] is not a finite number"):
        codec.encode_batch("scan", [b"raw", 1, math.inf])
    with pytest.raises(TypeError, match=r"result\['s'\] is not a finite number"):
        codec.encode_result({"s": math.nan})
    with pytest.raises(TypeError, match="is not a finite number"):
        codec.encode_value([math.nan])


# -- calls batched together (dynamic batching) ---------------------------------------------------------------


def test_calls_of_several_capabilities_ride_in_one_multi_request_unchanged() -> None:
    calls = [codec.encode_call("scan", "text"), codec.encode_call("hash", b"\x00\xff"), codec.encode_call("n", 3)]
    decoded = codec.decode_multi(memoryview(codec.encode_multi(calls)))
    assert decoded == calls
    assert [codec.decode_call(memoryview(c)) for c in decoded] == [("scan", "text"), ("hash", b"\x00\xff"), ("n", 3)]


def test_a_multi_reply_in_parts_decodes_to_every_outcome_in_order() -> None:
    replies = [codec.encode_result({"a": 1}), codec.encode_error("plugin_raised", "ValueError", "no"), b"R\x01"]
    first, done_first = codec.decode_reply_items(memoryview(codec.encode_reply_items(replies[:2], final=False)))
    last, done_last = codec.decode_reply_items(memoryview(codec.encode_reply_items(replies[2:], final=True)))
    assert (done_first, done_last) == (False, True)
    assert first + last == [(True, {"a": 1}), (False, ("plugin_raised", "ValueError", "no")), (True, b"\x01")]


@pytest.mark.parametrize("data", [b"", b"A", b"M\x00\x00\x00\x02\x00\x00\x00\x05", b"Mxyz"])
def test_a_malformed_multi_request_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        codec.decode_multi(memoryview(data))


def test_a_worker_may_not_report_errors_outside_the_allow_list_in_a_multi_reply() -> None:
    forged = b"F" + b"E" + len(b'{"kind":"pickle"}').to_bytes(4, "big") + b'{"kind":"pickle"}'
    with pytest.raises(ValueError, match="unknown error kind"):
        codec.decode_reply_items(memoryview(forged))
    assert "not_run" in codec.ERROR_KINDS
