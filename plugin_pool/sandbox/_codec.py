"""Values across the sandbox boundary, shared by both sides (imports only orjson and the generated protocol).

Payloads and results are JSON-compatible values (orjson) or raw bytes, passed through untouched. Calls
travel as ``Frame`` messages of ``proto/plugin_pool/v1/worker.proto`` (service ``PluginWorkerFrames``);
their ``data`` is the compact layout below, and the one-field ``Frame`` is encoded by hand (tag 0x0a,
varint length, bytes: exactly protobuf's wire format) so a call costs no message objects and few copies.

Call request:   kind capability NUL body     kind J: body is JSON, R: body is the raw bytes
Call reply:     kind body                    kind J: JSON result, R: raw bytes result,
                                             E: an error as JSON {"kind", "type", "message"}
Batch request:  kind capability NUL body     kind A: body is one JSON array of the payloads,
                                             B: every payload is bytes: count, lengths, the bytes,
                                             F: body is framed items (item kind J/R, 4-byte length, body)
Batch reply:    kind body                    A: one JSON array of [0, result] or [1, error],
                                             B: every result is bytes: count, lengths, the bytes,
                                             F: framed items (item kind J/R/E, 4-byte length, body),
                                             E: the whole batch failed (one error)
Multi request:  M count lengths calls        calls batched together (several callers, maybe several
                                             capabilities): each item is a whole call request
Multi reply:    P items ... F items          framed items (as F above), one per call, in order; a reply
                                             larger than the message limit comes as several frames,
                                             every one but the last of kind P. After a call that hit the
                                             worker's memory limit the rest are not run (error not_run).

The progress cell: a page the host creates per worker and the worker maps before it confines itself. While
it runs the calls of a multi request the worker keeps the number of the call in progress there (1-based, 4
bytes little-endian at offset 0; 0 between requests), so when the worker dies the host knows which call it
died in: that call fails, the others did not cause it. The host bounds-checks what it reads (a worker may
write anything there; at worst it blames another call of its own plugin).

A, B and F are chosen by content: one orjson call or one struct call serves a whole batch, so a batch
costs well under a microsecond per item in the codec.

Errors are data from an allow-list of kinds (never pickles); see ``ERROR_KINDS``.

Values are checked on the way out, never changed: orjson writes NaN and +-Infinity as ``null``, so every
encoder here refuses them instead (``TypeError`` naming where in the value they are). The check costs one
``b"null" in data`` scan; the value is walked only when the output holds a ``null``.
"""

from __future__ import annotations

import array
import enum
import itertools
import math
import struct
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from plugin_pool._proto.v1 import worker_pb2 as pb

__all__ = [
    "ERROR_KINDS",
    "PROGRESS",
    "PROGRESS_BYTES",
    "Outcome",
    "decode_batch",
    "decode_batch_results",
    "decode_blob_results",
    "decode_call",
    "decode_multi",
    "decode_reply",
    "decode_reply_items",
    "decode_value",
    "dumps",
    "encode_batch",
    "encode_batch_results",
    "encode_call",
    "encode_error",
    "encode_multi",
    "encode_reply_items",
    "encode_result",
    "encode_value",
    "find_non_finite",
    "frame",
    "unframe",
]

ERROR_KINDS = frozenset(
    {
        "plugin_raised",
        "resource_limit",
        "bad_payload",
        "bad_reply",
        "reply_too_large",
        "unknown_capability",
        "not_ready",
        "service_error",
        "internal",
        "not_run",
    }
)

Outcome = tuple[bool, Any]
"""(True, result) or (False, (kind, type, message))."""

_LEN = struct.Struct(">I")
_SWAP = sys.byteorder != "big"  # blob tables are big-endian like every other length here
_JSON, _RAW, _ERROR, _ARRAY, _FRAMED, _BLOBS = b"J", b"R", b"E", b"A", b"F", b"B"
_MULTI, _PART = b"M", b"P"
PROGRESS = struct.Struct("<I")
"""The progress cell's layout (see the module docstring)."""
PROGRESS_BYTES = 4096
ITEM_OVERHEAD = 5
"""Bytes a framed item adds to its reply (kind byte and length are shared: the reply's kind becomes the
item's kind)."""
_BYTES = (bytes, bytearray, memoryview)


# -- JSON, with non-finite floats refused -----------------------------------------------------------------


# orjson turns datetimes into strings and dataclasses into dicts on its own: a value that would arrive as
# another type is refused like a set is, so a call gives the same types at every trust level or fails.
_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def dumps(value: Any, what: str = "value") -> bytes:
    """``orjson.dumps(value)``, refusing what would not arrive as it left: NaN and +-Infinity (orjson would
    write null), datetimes and dataclass instances (orjson would write a string and a dict).

    Raises TypeError for a value JSON cannot hold, naming the place of a non-finite float as ``what`` plus
    its path (``payload['scores'][2]``).
    """
    data = orjson.dumps(value, option=_STRICT)
    if b"null" in data:
        path = find_non_finite(value, what)
        if path is not None:
            raise TypeError(
                f"{path} is not a finite number; NaN and Infinity have no JSON form and would arrive as null: "
                "send None or a string instead"
            )
    return data


def find_non_finite(value: Any, path: str = "value") -> str | None:
    """The path of the first NaN or +-Infinity in ``value`` (as orjson would serialize it), or None."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return where
        elif isinstance(item, dict):
            stack.extend((v, f"{where}[{k!r}]") for k, v in reversed(item.items()))
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
        elif isinstance(item, enum.Enum):
            stack.append((item.value, f"{where}.value"))
    return None


# -- the one-field Frame message, by hand ----------------------------------------------------------------


def frame(data: bytes) -> bytes:
    """Serialize ``Frame(data=data)`` (protobuf wire format: field 1, length-delimited)."""
    if not data:
        return b""
    size = len(data)
    prefix = bytearray(b"\x0a")
    while size > 0x7F:
        prefix.append((size & 0x7F) | 0x80)
        size >>= 7
    prefix.append(size)
    return bytes(prefix) + data


def unframe(raw: bytes) -> memoryview:
    """Parse a serialized ``Frame`` and return a view of its ``data``. Raises ValueError if malformed."""
    view = memoryview(raw)
    if not view:
        return view
    if view[0] != 0x0A:
        raise ValueError("not a Frame message")
    size = shift = 0
    pos = 1
    while True:
        if pos >= len(view) or shift > 35:
            raise ValueError("truncated Frame length")
        byte = view[pos]
        pos += 1
        size |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    if pos + size != len(view):
        raise ValueError("Frame length does not match its data")
    return view[pos:]


# -- single calls ------------------------------------------------------------------------------------------


def encode_call(capability: str, payload: Any) -> bytes:
    """The request data of one call. Raises TypeError for a payload JSON cannot hold."""
    if isinstance(payload, _BYTES):
        return _RAW + capability.encode() + b"\0" + bytes(payload)
    return _JSON + capability.encode() + b"\0" + dumps(payload, "payload")


def decode_call(data: memoryview) -> tuple[str, Any]:
    """(capability, payload) from request data. Raises ValueError (malformed, or invalid JSON)."""
    kind = bytes(data[:1])
    end = bytes(data[1:257]).find(b"\0")
    if end < 0 or kind not in (_JSON, _RAW):
        raise ValueError("malformed call")
    capability = bytes(data[1 : 1 + end]).decode()
    body = data[2 + end :]
    return capability, (orjson.loads(body) if kind == _JSON else bytes(body))


def encode_result(result: Any) -> bytes:
    """The reply data of a successful call. Raises TypeError for a result JSON cannot hold."""
    if isinstance(result, _BYTES):
        return _RAW + bytes(result)
    return _JSON + dumps(result, "result")


def encode_error(kind: str, type_name: str = "", message: str = "") -> bytes:
    """The reply data of a failed call."""
    return _ERROR + orjson.dumps({"kind": kind, "type": type_name, "message": message})


def decode_reply(data: memoryview) -> Outcome:
    """(True, result) or (False, (kind, type, message)). Raises ValueError if malformed."""
    kind = bytes(data[:1])
    body = data[1:]
    if kind == _JSON:
        return True, orjson.loads(body)
    if kind == _RAW:
        return True, bytes(body)
    if kind == _ERROR:
        return False, _error_tuple(orjson.loads(body))
    raise ValueError("malformed reply")


def _error_tuple(obj: Any) -> tuple[str, str, str]:
    if not isinstance(obj, dict):
        raise ValueError("malformed error")
    kind, type_name, message = obj.get("kind"), obj.get("type", ""), obj.get("message", "")
    if kind not in ERROR_KINDS or not isinstance(type_name, str) or not isinstance(message, str):
        raise ValueError(f"unknown error kind {str(kind)[:50]!r}")
    return kind, type_name, message


# -- batches -----------------------------------------------------------------------------------------------


def _pack_blobs(prefix: bytes, items: Sequence[bytes]) -> bytes:
    sizes = array.array("I", map(len, items))
    if _SWAP:
        sizes.byteswap()
    # One join, one allocation: a batch is large, and every extra copy of it costs page faults.
    return b"".join((prefix, _LEN.pack(len(items)), sizes.tobytes(), *items))


def _unpack_blobs(body: memoryview) -> list[bytes]:
    if len(body) < 4:
        raise ValueError("truncated blob table")
    (count,) = _LEN.unpack_from(body)
    table_end = 4 + 4 * count
    if table_end > len(body):
        raise ValueError("truncated blob table")
    sizes = array.array("I")
    sizes.frombytes(body[4:table_end])
    if _SWAP:
        sizes.byteswap()
    offsets = list(itertools.accumulate(sizes, initial=0))
    if offsets[-1] != len(body) - table_end:
        raise ValueError("blob sizes do not match the data")
    blob = bytes(body[table_end:])
    return list(map(blob.__getitem__, map(slice, offsets, offsets[1:])))


def encode_batch(capability: str, payloads: Sequence[Any]) -> bytes:
    """The request data of a batch: one JSON array when no payload is bytes, a blob table when all are,
    else framed items."""
    head = capability.encode() + b"\0"
    if set(map(type, payloads)) == {bytes}:
        return _pack_blobs(_BLOBS + head, payloads)
    if not any(isinstance(p, _BYTES) for p in payloads):
        return _ARRAY + head + dumps(list(payloads), "payloads")
    parts = [_FRAMED, head]
    for index, payload in enumerate(payloads):
        if isinstance(payload, _BYTES):
            body = bytes(payload)
            parts += [_RAW, _LEN.pack(len(body)), body]
        else:
            body = dumps(payload, f"payloads[{index}]")
            parts += [_JSON, _LEN.pack(len(body)), body]
    return b"".join(parts)


def decode_batch(data: memoryview) -> tuple[str, list[Any]]:
    """(capability, payloads) from batch request data. Raises ValueError if malformed."""
    kind = bytes(data[:1])
    end = bytes(data[1:257]).find(b"\0")
    if end < 0:
        raise ValueError("malformed batch")
    capability = bytes(data[1 : 1 + end]).decode()
    body = data[2 + end :]
    if kind == _ARRAY:
        payloads = orjson.loads(body)
        if not isinstance(payloads, list):
            raise ValueError("a batch must be an array")
        return capability, payloads
    if kind == _BLOBS:
        return capability, list(_unpack_blobs(body))
    if kind == _FRAMED:
        return capability, [p for _, p in _read_items(body, (_JSON, _RAW))]
    raise ValueError("malformed batch")


def encode_batch_results(outcomes: Sequence[Outcome]) -> bytes:
    """The reply data of a batch: one JSON array when every result is JSON-compatible, else framed items.

    Raises TypeError if a result is neither bytes nor JSON-compatible (the caller reports it per item).
    """
    oks, values = zip(*outcomes, strict=True) if outcomes else ((), ())
    if all(oks) and set(map(type, values)) == {bytes}:
        return _pack_blobs(_BLOBS, values)
    try:
        return _ARRAY + dumps(
            [
                [0, value] if ok else [1, {"kind": value[0], "type": value[1], "message": value[2]}]
                for ok, value in outcomes
            ],
            "results",
        )
    except TypeError:
        pass
    parts = [_FRAMED]
    for ok, value in outcomes:
        body = encode_result(value) if ok else encode_error(*value)
        parts += [body[:1], _LEN.pack(len(body) - 1), body[1:]]
    return b"".join(parts)


def decode_batch_results(data: memoryview) -> list[Outcome]:
    """The outcomes of a batch reply, in order; one error alone when the whole batch failed.

    Raises ValueError if malformed.
    """
    kind = bytes(data[:1])
    body = data[1:]
    if kind == _ERROR:
        return [(False, _error_tuple(orjson.loads(body)))]
    if kind == _BLOBS:
        return [(True, value) for value in _unpack_blobs(body)]
    if kind == _ARRAY:
        items = orjson.loads(body)
        if not isinstance(items, list):
            raise ValueError("malformed batch reply")
        out: list[Outcome] = []
        for item in items:
            if not isinstance(item, list) or len(item) != 2 or item[0] not in (0, 1):
                raise ValueError("malformed batch item")
            out.append((True, item[1]) if item[0] == 0 else (False, _error_tuple(item[1])))
        return out
    if kind == _FRAMED:
        return [
            (True, value) if item_kind != _ERROR else (False, _error_tuple(value))
            for item_kind, value in _read_items(body, (_JSON, _RAW, _ERROR))
        ]
    raise ValueError("malformed batch reply")


def decode_blob_results(data: memoryview) -> list[bytes] | None:
    """The results of a batch reply whose every result is bytes (kind B), or None for any other kind: the
    fast path of a batch of bytes, which skips the outcome tuples. Raises ValueError if malformed."""
    if bytes(data[:1]) != _BLOBS:
        return None
    return _unpack_blobs(data[1:])


def _read_items(body: memoryview, kinds: tuple[bytes, ...]) -> list[tuple[bytes, Any]]:
    items: list[tuple[bytes, Any]] = []
    pos = 0
    while pos < len(body):
        if pos + 5 > len(body):
            raise ValueError("truncated batch item")
        kind = bytes(body[pos : pos + 1])
        (size,) = _LEN.unpack_from(body, pos + 1)
        start, pos = pos + 5, pos + 5 + size
        if kind not in kinds or pos > len(body):
            raise ValueError("malformed batch item")
        chunk = body[start:pos]
        items.append((kind, bytes(chunk) if kind == _RAW else orjson.loads(chunk)))
    return items


# -- calls batched together (the pool's dynamic batching) ------------------------------------------------


def encode_multi(calls: Sequence[bytes]) -> bytes:
    """The request data of calls batched together; each of ``calls`` is a whole call request (encode_call),
    so calls of different capabilities ride in one frame. No value is encoded again."""
    return _pack_blobs(_MULTI, calls)


def decode_multi(data: memoryview) -> list[bytes]:
    """The call requests of a multi request, in order. Raises ValueError if malformed."""
    if bytes(data[:1]) != _MULTI:
        raise ValueError("not a multi request")
    return _unpack_blobs(data[1:])


def encode_reply_items(replies: Sequence[bytes], *, final: bool) -> bytes:
    """Single-call replies (kind and body, as the worker answers one call) as framed items: the last frame
    of a multi reply (``final``), or a part with more to come."""
    parts = [_FRAMED if final else _PART]
    for reply in replies:
        parts += [reply[:1], _LEN.pack(len(reply) - 1), reply[1:]]
    return b"".join(parts)


def decode_reply_items(data: memoryview) -> tuple[list[Outcome], bool]:
    """The outcomes in one frame of a multi reply, and whether it was the last frame.

    Raises ValueError if malformed (a whole-batch error ``E`` is returned as one outcome, final)."""
    kind = bytes(data[:1])
    if kind == _ERROR:
        return [(False, _error_tuple(orjson.loads(data[1:])))], True
    if kind not in (_FRAMED, _PART):
        raise ValueError("malformed multi reply")
    items = _read_items(data[1:], (_JSON, _RAW, _ERROR))
    return [(True, value) if item_kind != _ERROR else (False, _error_tuple(value)) for item_kind, value in items], (
        kind == _FRAMED
    )


# -- host service calls (protobuf Values on the Callbacks stream) ------------------------------------------


def decode_value(value: pb.Value) -> Any:
    """A Value's content: raw bytes as they are, JSON decoded with orjson (None when unset)."""
    which = value.WhichOneof("kind")
    if which == "raw":
        return value.raw
    if which == "json":
        return orjson.loads(value.json)
    return None


def encode_value(obj: Any) -> pb.Value:
    """``obj`` as a Value: bytes-like objects raw, everything else as orjson. Raises TypeError."""
    if isinstance(obj, _BYTES):
        return pb.Value(raw=bytes(obj))
    return pb.Value(json=dumps(obj))
