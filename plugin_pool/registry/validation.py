"""Every check on registry input, in one place, used by both backends before anything reaches storage.

Two kinds of input, two policies:

- **What identifies something** (plugin and host ids, names, versions, trust levels, states, actors, content
  hashes, capability names, configuration and capability parameters, an operator's reason) must be valid or
  it is refused with a :class:`~plugin_pool.errors.RegistryError` that names the field and says the fix.
  Text may not hold NUL (PostgreSQL cannot store it) or unpaired surrogates (not UTF-8: what Python makes of
  undecodable bytes, such as a non-UTF-8 command-line argument); JSON may not be nested deeper than
  :data:`JSON_MAX_DEPTH`, be larger than its byte limit, hold NaN or infinities, or have non-string keys.
- **Free text the host records about what happened** (a move's reason, an audit event's details) may quote a
  plugin's own error message, a capability name a caller invented or a file name from a plugin folder. A
  plugin must not be able to make an audit write fail, nor to blur the trail, so such text is kept exactly
  (non-finite numbers become strings); only its shape (depth, size, key types) is refused. A store that
  cannot hold NUL or unpaired surrogates (PostgreSQL) keeps it in :func:`to_storable` form and reads it
  back with :func:`from_storable`, so every backend gives back exactly what was recorded.

The in-memory backend applies exactly these checks, so it cannot accept what PostgreSQL would refuse; the
contract suite (tests/contract) feeds every bad input to both. Pure functions, safe to call from any thread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from packaging.version import InvalidVersion, Version

from plugin_pool.config import validate_host_id
from plugin_pool.errors import InvalidPluginError, RegistryError
from plugin_pool.lifecycle import PluginState
from plugin_pool.model import Capabilities, PluginInfo, TrustLevel, validate_capability_name, validate_plugin_id

__all__ = [
    "ACTOR_MAX_LEN",
    "CONFIG_MAX_BYTES",
    "DETAILS_MAX_BYTES",
    "EVENT_PLUGIN_ID_MAX_LEN",
    "HASH_MAX_LEN",
    "JSON_MAX_DEPTH",
    "NAME_MAX_LEN",
    "PAGE_MAX",
    "REASON_MAX_LEN",
    "VERSION_MAX_LEN",
    "EventRequest",
    "Registration",
    "StatusMove",
    "check_actor",
    "check_capabilities",
    "check_config",
    "check_details",
    "check_enabled",
    "check_enabled_change",
    "check_event",
    "check_event_plugin_id",
    "check_hash",
    "check_host_id",
    "check_limit",
    "check_name",
    "check_operator_reason",
    "check_plugin_id",
    "check_reason",
    "check_registration",
    "check_state",
    "check_status_move",
    "check_trust_level",
    "check_version",
    "details_from_storable",
    "details_to_storable",
    "from_storable",
    "to_storable",
]

ACTOR_MAX_LEN = 200
NAME_MAX_LEN = 200
VERSION_MAX_LEN = 100
HASH_MAX_LEN = 200
REASON_MAX_LEN = 2000
EVENT_PLUGIN_ID_MAX_LEN = 200
CONFIG_MAX_BYTES = 256 * 1024
"""Largest configuration or capability parameters, as JSON."""
DETAILS_MAX_BYTES = 1024 * 1024
"""Largest audit event details, as JSON (a hash mismatch lists up to 100 changed paths of up to 4 KiB)."""
JSON_MAX_DEPTH = 32
"""Deepest nesting of any JSON the registry stores (objects and arrays)."""
PAGE_MAX = 10_000
"""Largest page a listing returns at once."""

_REPLACEMENT = "\ufffd"


# -- text -------------------------------------------------------------------------------------------------


def _text_problem(value: str) -> str | None:
    """What makes ``value`` unstorable as PostgreSQL text, or None."""
    if "\x00" in value:
        return "contains a NUL character (\\x00), which PostgreSQL cannot store"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 text (it holds an unpaired surrogate, e.g. from undecodable bytes)"
    return None


_ESCAPE = "\ue000"  # a private-use character: never in text a host records, escaped itself when it is


def _needs_escape(c: str) -> bool:
    return c == "\x00" or c == _ESCAPE or "\ud800" <= c <= "\udfff"


def to_storable(value: str) -> str:
    """``value`` with NUL, unpaired surrogates and U+E000 written as U+E000 plus four hex digits: text any
    PostgreSQL text or jsonb column stores, unchanged when it has none of them (nearly always). Pure."""
    if _text_problem(value) is None and _ESCAPE not in value:
        return value
    return "".join(f"{_ESCAPE}{ord(c):04x}" if _needs_escape(c) else c for c in value)


def from_storable(value: str) -> str:
    """The inverse of :func:`to_storable`. Pure."""
    if _ESCAPE not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == _ESCAPE and i + 5 <= len(value):
            try:
                out.append(chr(int(value[i + 1 : i + 5], 16)))
                i += 5
                continue
            except ValueError:
                pass
        out.append(c)
        i += 1
    return "".join(out)


def _map_strings(value: Any, convert: Any) -> Any:
    if isinstance(value, str):
        return convert(value)
    if isinstance(value, Mapping):
        return {convert(k): _map_strings(v, convert) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_map_strings(v, convert) for v in value]
    return value


def details_to_storable(details: Mapping[str, Any]) -> dict[str, Any]:
    """Checked event details (see check_details) with every string and key in :func:`to_storable` form."""
    result: dict[str, Any] = _map_strings(details, to_storable)
    return result


def details_from_storable(details: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`details_to_storable`."""
    result: dict[str, Any] = _map_strings(details, from_storable)
    return result


def _check_identifier_text(value: object, what: str, max_len: int, *, plugin_id: str | None = None) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise RegistryError(
            f"{what} {value!r:.80} is invalid: expected a non-empty string of at most {max_len} characters",
            plugin_id=plugin_id,
        )
    problem = _text_problem(value)
    if problem is None and any(c < " " or c == "\x7f" for c in value):
        problem = "contains a control character"
    if problem is not None:
        raise RegistryError(f"{what} {value!r:.80} is invalid: it {problem}", plugin_id=plugin_id)
    return value


def check_plugin_id(value: object) -> str:
    """Return ``value`` if it is a valid plugin id (the model's rule), else raise RegistryError."""
    try:
        return validate_plugin_id(value)
    except InvalidPluginError as exc:
        raise RegistryError(str(exc)) from None


def check_host_id(value: object) -> str:
    """Return ``value`` if it is a valid host id (the ``[host] id`` rule of plugin_pool.config)."""
    try:
        return validate_host_id(value)
    except ValueError as exc:
        raise RegistryError(str(exc)) from None


def check_event_plugin_id(value: object) -> str | None:
    """The plugin id an audit event names: None, or text of 1-200 characters (events may name a plugin that
    never registered, such as a rejected folder)."""
    if value is None:
        return None
    return _check_identifier_text(value, "audit event plugin id", EVENT_PLUGIN_ID_MAX_LEN)


def check_name(value: object, plugin_id: str) -> str:
    """A plugin's display name."""
    return _check_identifier_text(value, "plugin name", NAME_MAX_LEN, plugin_id=plugin_id)


def check_actor(value: object) -> str:
    """Who did something (a host's identity, an operator)."""
    if not isinstance(value, str) or not value.strip() or len(value) > ACTOR_MAX_LEN:
        raise RegistryError(
            f"actor {value!r:.80} is invalid: expected a non-empty string of at most {ACTOR_MAX_LEN} characters"
        )
    return _check_identifier_text(value, "actor", ACTOR_MAX_LEN)


def check_hash(value: object, plugin_id: str) -> str | None:
    """A content hash (the seed's assembly_hash), or None."""
    if value is None:
        return None
    return _check_identifier_text(value, "plugin assembly_hash", HASH_MAX_LEN, plugin_id=plugin_id)


def check_version(value: object, plugin_id: str) -> Version:
    """A PEP 440 version (the model's rule: packaging's Version) of at most VERSION_MAX_LEN characters."""
    try:
        version = value if isinstance(value, Version) else Version(str(value))
    except InvalidVersion:
        raise RegistryError(
            f"plugin version {value!r:.80} is invalid: use a PEP 440 version such as '1.2.0'", plugin_id=plugin_id
        ) from None
    if len(str(version)) > VERSION_MAX_LEN:
        raise RegistryError(
            f"plugin version {str(version)[:40]!r}... is longer than {VERSION_MAX_LEN} characters", plugin_id=plugin_id
        )
    return version


def check_trust_level(value: object, plugin_id: str | None) -> TrustLevel:
    """A trust level, given as the enum or its name."""
    try:
        return TrustLevel.parse(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise RegistryError(str(exc), plugin_id=plugin_id) from None


def check_state(value: object, what: str) -> PluginState:
    """A lifecycle state, given as the enum or its name."""
    try:
        return PluginState.parse(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise RegistryError(f"{what}: {exc}") from None


def check_enabled(value: object, plugin_id: str) -> bool:
    """An operator's switch: exactly True or False."""
    if not isinstance(value, bool):
        raise RegistryError(f"enabled must be True or False, got {value!r:.40}", plugin_id=plugin_id)
    return value


def _cut(text: str) -> str:
    return text if len(text) <= REASON_MAX_LEN else text[: REASON_MAX_LEN - 1] + "…"


def check_reason(value: object) -> str | None:
    """Why a host moved a plugin: None, or the text (kept exactly, see the module's doc) cut to REASON_MAX_LEN
    characters; raise RegistryError for anything but a string."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RegistryError(f"reason {value!r:.80} is invalid: expected a string")
    return _cut(value)


def check_operator_reason(value: object, plugin_id: str | None = None) -> str | None:
    """Why an operator disabled or enabled a plugin: None, or storable text (refused otherwise, so the
    operator sees the problem instead of a changed reason), cut to REASON_MAX_LEN characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RegistryError(f"reason {value!r:.80} is invalid: expected a string", plugin_id=plugin_id)
    problem = _text_problem(value)
    if problem is not None:
        raise RegistryError(
            f"reason {value!r:.80} is invalid: it {problem}; give the reason as UTF-8 text", plugin_id=plugin_id
        )
    return _cut(value)


def check_limit(value: object, what: str = "limit") -> int | None:
    """A page size: None (everything), or 0..PAGE_MAX."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= PAGE_MAX:
        raise RegistryError(f"{what} {value!r:.40} is invalid: expected a whole number from 0 to {PAGE_MAX}")
    return value


# -- JSON -------------------------------------------------------------------------------------------------


def _walk_json(value: Any, what: str, *, strict: bool, plugin_id: str | None) -> Any:
    """A plain copy of ``value`` (dicts, lists, str, int, float, bool, None), checked without recursion so
    a 5,000-deep value is refused with a message instead of a RecursionError. ``strict`` refuses text
    problems and non-finite numbers; otherwise text is kept as it is and non-finite numbers become strings."""

    def refuse(where: str, problem: str) -> RegistryError:
        return RegistryError(f"{what} is invalid at {where}: {problem}", plugin_id=plugin_id)

    def leaf(item: Any, where: str) -> Any:
        if item is None or isinstance(item, bool | int):
            return item
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem is None:
                return item
            if strict:
                raise refuse(where, f"the string {problem}")
            return item
        if isinstance(item, float):
            if math.isfinite(item):
                return item
            if strict:
                raise refuse(where, f"{item} is not a JSON number (NaN and infinities are not JSON)")
            return str(item)
        raise refuse(where, f"{type(item).__name__} is not JSON (use objects, arrays, strings, numbers, booleans)")

    root: list[Any] = [None]
    # (source, depth, where, container to fill, key or index in it)
    stack: list[tuple[Any, int, str, Any, Any]] = [(value, 1, "the top", root, 0)]
    while stack:
        item, depth, where, parent, slot = stack.pop()
        if isinstance(item, Mapping):
            copy: Any = {}
        elif isinstance(item, list | tuple):
            copy = [None] * len(item)
        else:
            parent[slot] = leaf(item, where)
            continue
        if depth > JSON_MAX_DEPTH:
            raise refuse(where, f"nested more than {JSON_MAX_DEPTH} levels deep; flatten it")
        parent[slot] = copy
        if isinstance(copy, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise refuse(where, f"key {key!r:.40} is not a string (JSON object keys are strings)")
                problem = _text_problem(key)
                if problem is not None and strict:
                    raise refuse(where, f"a key {problem}")
                copy[key] = None
                shown = to_storable(key[:40])
                stack.append((child, depth + 1, f"{where}.{shown}" if where != "the top" else shown, copy, key))
        else:
            for index, child in enumerate(item):
                stack.append((child, depth + 1, f"{where}[{index}]", copy, index))
    return root[0]


def _check_json(
    value: Mapping[str, Any] | None, what: str, *, strict: bool, max_bytes: int, plugin_id: str | None
) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RegistryError(f"{what} must be a mapping, got {type(value).__name__}", plugin_id=plugin_id)
    plain: dict[str, Any] = _walk_json(value, what, strict=strict, plugin_id=plugin_id)
    try:
        encoded = orjson.dumps(plain if strict else details_to_storable(plain))
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        raise RegistryError(f"{what} is not valid JSON: {exc}", plugin_id=plugin_id) from None
    if len(encoded) > max_bytes:
        raise RegistryError(f"{what} is {len(encoded)} bytes as JSON; the limit is {max_bytes}", plugin_id=plugin_id)
    return plain


def check_config(value: Mapping[str, Any] | None, what: str, *, plugin_id: str | None = None) -> dict[str, Any]:
    """A plain, JSON-storable copy of a configuration (or capability parameters); strict: anything that is
    not exactly storable JSON is refused naming ``what`` and where in it."""
    return _check_json(value, what, strict=True, max_bytes=CONFIG_MAX_BYTES, plugin_id=plugin_id)


def check_details(value: Mapping[str, Any] | None, *, plugin_id: str | None = None) -> dict[str, Any]:
    """A plain copy of audit event details: text kept exactly, non-finite numbers as strings; a value of the
    wrong shape (not JSON, too deep, too large in storable form) is refused."""
    return _check_json(value, "event details", strict=False, max_bytes=DETAILS_MAX_BYTES, plugin_id=plugin_id)


def check_capabilities(capabilities: Capabilities, plugin_id: str) -> dict[str, dict[str, Any]]:
    """Capability name -> a plain copy of its parameters; names follow the model's rule."""
    out: dict[str, dict[str, Any]] = {}
    for capability in capabilities.values():
        try:
            name = validate_capability_name(capability.name, plugin_id=plugin_id)
        except InvalidPluginError as exc:
            raise RegistryError(str(exc), plugin_id=plugin_id) from None
        out[name] = check_config(
            capability.parameters, f"parameters of capability {name!r} of plugin {plugin_id!r}", plugin_id=plugin_id
        )
    return out


# -- whole requests: what each backend's writes check, in this order, before they touch storage -------------


@dataclass(frozen=True, slots=True)
class Registration:
    """A checked ``register`` call: plain, storable copies of what it records."""

    plugin_id: str
    level: TrustLevel
    name: str
    version: Version
    config: dict[str, Any]
    capabilities: dict[str, dict[str, Any]]


def check_registration(
    info: PluginInfo,
    capabilities: Capabilities,
    *,
    actor: object,
    assembly_hash: object,
    config: Mapping[str, Any] | None,
) -> Registration:
    """Check every argument of ``register``; the first bad one is refused naming its field."""
    plugin_id = check_plugin_id(info.id)
    check_actor(actor)
    level = check_trust_level(info.trust_level, plugin_id)
    name = check_name(info.name, plugin_id)
    version = check_version(info.version, plugin_id)
    check_hash(assembly_hash, plugin_id)
    config_json = check_config(config, f"configuration of plugin {plugin_id!r}", plugin_id=plugin_id)
    return Registration(plugin_id, level, name, version, config_json, check_capabilities(capabilities, plugin_id))


@dataclass(frozen=True, slots=True)
class StatusMove:
    """A checked ``set_status`` call (the plugin id is checked by the backend, where it looks it up)."""

    status: PluginState
    expected: PluginState | None
    reason: str | None
    details: dict[str, Any]


def check_status_move(
    plugin_id: object,
    status: object,
    *,
    expected: object,
    actor: object,
    reason: object,
    details: Mapping[str, Any] | None,
) -> StatusMove:
    """Check the arguments of ``set_status`` but the plugin id."""
    check_actor(actor)
    checked_reason = check_reason(reason)
    extra = check_details(details, plugin_id=plugin_id if isinstance(plugin_id, str) else None)
    checked = check_state(status, "status")
    was = check_state(expected, "expected") if expected is not None else None
    return StatusMove(checked, was, checked_reason, extra)


@dataclass(frozen=True, slots=True)
class EventRequest:
    """A checked ``record_event`` call (the kind is checked by the backend, against EventKind)."""

    plugin_id: str | None
    state: PluginState | None
    details: dict[str, Any]


def check_event(plugin_id: object, *, actor: object, state: object, details: Mapping[str, Any] | None) -> EventRequest:
    """Check the arguments of ``record_event`` but its kind."""
    check_actor(actor)
    event_plugin_id = check_event_plugin_id(plugin_id)
    extra = check_details(details, plugin_id=event_plugin_id)
    return EventRequest(event_plugin_id, check_state(state, "state") if state is not None else None, extra)


def check_enabled_change(plugin_id: object, enabled: object, *, actor: object, reason: object) -> str | None:
    """Check the arguments of ``set_enabled`` but the plugin id; return the operator's reason."""
    check_actor(actor)
    checked_reason = check_operator_reason(reason, plugin_id if isinstance(plugin_id, str) else None)
    check_enabled(enabled, str(plugin_id))
    return checked_reason
