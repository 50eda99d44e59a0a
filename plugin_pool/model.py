"""The plugin model (the seed's Abstractions): trust levels, plugin info, capabilities, the plugin protocol.

Pure data and protocols; validated on construction with errors that name the field.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from packaging.version import InvalidVersion, Version

from plugin_pool.errors import InvalidPluginError

if TYPE_CHECKING:
    from plugin_pool.context import PluginContext

__all__ = [
    "CONNECT",
    "EVALUATE_POLICY",
    "SCAN",
    "WELL_KNOWN_CAPABILITIES",
    "Capabilities",
    "Capability",
    "Plugin",
    "PluginInfo",
    "TrustLevel",
    "Version",
]

PLUGIN_ID_MAX_LEN = 63
"""The longest plugin id, in characters."""
# Both rules are used with fullmatch only: a ``$`` anchor would also match before a trailing newline.
_ID_RE = re.compile(rf"[a-z][a-z0-9_-]{{0,{PLUGIN_ID_MAX_LEN - 1}}}")
_CAPABILITY_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
_NAME_MAX_LEN = 200
_TEXT_MAX_LEN = 2000


class TrustLevel(enum.Enum):
    """How far the host trusts a plugin, which decides where its code runs.

    BUILTIN and TRUSTED run in the host process; UNTRUSTED runs only in a confined sandbox worker.
    """

    BUILTIN = "builtin"
    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"

    @property
    def in_process(self) -> bool:
        """Whether plugins of this level run in the host process."""
        return self is not TrustLevel.UNTRUSTED

    @classmethod
    def parse(cls, value: str | TrustLevel) -> TrustLevel:
        """Return the level named ``value`` (case-insensitive); raise ValueError naming the allowed values."""
        if isinstance(value, TrustLevel):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            allowed = ", ".join(t.value for t in cls)
            raise ValueError(f"unknown trust level {value!r}; expected one of: {allowed}") from None


SCAN = "scan"
EVALUATE_POLICY = "evaluate_policy"
CONNECT = "connect"
WELL_KNOWN_CAPABILITIES: frozenset[str] = frozenset({SCAN, EVALUATE_POLICY, CONNECT})
"""The seed's capability names (CanScan, CanEvaluatePolicy, CanConnect). Custom names are allowed too."""

NETWORK_CAPABILITIES: frozenset[str] = frozenset({CONNECT})
"""Capabilities that need network access, which Untrusted plugins never get (the seed: "at least Trusted")."""


def validate_plugin_id(value: object, *, field_name: str = "id") -> str:
    """Return ``value`` if it is a valid plugin id, else raise InvalidPluginError naming the field. Pure.

    The one id rule: 1-63 characters, ASCII lowercase letter first, then lowercase letters, digits, ``-``
    or ``_`` (so an id is safe in paths, socket names, metric labels and SQL); nothing else, not even a
    trailing newline. Every place that accepts an id calls this.
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        where = "" if field_name == "id" else f" ({field_name})"
        raise InvalidPluginError(
            f"plugin id {value!r} is invalid{where}: use 1-{PLUGIN_ID_MAX_LEN} characters, a lowercase "
            f"letter first, then lowercase letters, digits, '-' or '_' (for example 'hello-world')",
            field=field_name,
        )
    return value


def is_valid_plugin_id(value: object) -> bool:
    """Whether ``value`` is a valid plugin id (the rule of :func:`validate_plugin_id`). Pure."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def is_valid_capability_name(value: object) -> bool:
    """Whether ``value`` is a valid capability name (the rule of :func:`validate_capability_name`). Pure."""
    return isinstance(value, str) and _CAPABILITY_RE.fullmatch(value) is not None


def validate_capability_name(value: object, *, plugin_id: str | None = None) -> str:
    """Return ``value`` if it is a valid capability name, else raise InvalidPluginError. Pure."""
    if not isinstance(value, str) or not _CAPABILITY_RE.fullmatch(value):
        raise InvalidPluginError(
            f"capability name {value!r} is invalid: use 1-63 characters, a lowercase letter first, then "
            f"lowercase letters, digits or '_' (it names the method the host calls, for example 'scan')",
            plugin_id=plugin_id,
            field="capabilities",
        )
    return value


def _check_text(value: object, field_name: str, max_len: int, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not optional and not value.strip()) or len(value) > max_len:
        need = "a string" if optional else "a non-empty string"
        raise InvalidPluginError(
            f"plugin {field_name} {value!r} is invalid: expected {need} of at most {max_len} characters",
            field=field_name,
        )
    return value


@dataclass(frozen=True, slots=True, init=False)
class PluginInfo:
    """Who a plugin is. Validated on construction; ``version`` accepts a string and is stored as a Version.

    Attributes: ``id`` (a short slug, unique per host), ``name``, ``version`` (PEP 440, ordered),
    ``trust_level``, ``description`` and ``author`` (optional).
    """

    id: str
    name: str
    version: Version
    trust_level: TrustLevel
    description: str | None = None
    author: str | None = None

    def __init__(
        self,
        id: str,
        name: str,
        version: Version | str,
        trust_level: TrustLevel | str,
        description: str | None = None,
        author: str | None = None,
    ) -> None:
        validate_plugin_id(id)
        _check_text(name, "name", _NAME_MAX_LEN, optional=False)
        if isinstance(version, str):
            try:
                version = Version(version)
            except InvalidVersion:
                raise InvalidPluginError(
                    f"plugin version {version!r} is invalid: use a PEP 440 version such as '1.2.0'",
                    plugin_id=id,
                    field="version",
                ) from None
        elif not isinstance(version, Version):
            raise InvalidPluginError(
                f"plugin version {version!r} is invalid: expected a string or packaging.version.Version",
                plugin_id=id,
                field="version",
            )
        try:
            level = TrustLevel.parse(trust_level)
        except ValueError as exc:
            raise InvalidPluginError(str(exc), plugin_id=id, field="trust_level") from None
        _check_text(description, "description", _TEXT_MAX_LEN, optional=True)
        _check_text(author, "author", _NAME_MAX_LEN, optional=True)
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "trust_level", level)
        object.__setattr__(self, "description", description)
        object.__setattr__(self, "author", author)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-compatible dict (version and trust level as strings)."""
        return {
            "id": self.id,
            "name": self.name,
            "version": str(self.version),
            "trust_level": self.trust_level.value,
            "description": self.description,
            "author": self.author,
        }


def _freeze_json(value: Any, where: str) -> Any:
    """Return a read-only copy of a JSON-compatible value; raise TypeError naming ``where`` otherwise."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, got {k!r}")
            out[k] = _freeze_json(v, f"{where}.{k}")
        return MappingProxyType(out)
    if isinstance(value, list | tuple):
        return tuple(_freeze_json(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"{where}: {type(value).__name__} is not JSON-compatible")


def thaw_json(value: Any) -> Any:
    """Return a plain (mutable, JSON-serializable) copy of a value frozen by the model."""
    if isinstance(value, Mapping):
        return {k: thaw_json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw_json(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Capability:
    """One thing a plugin can do: ``name`` maps to the method the host calls (``method``, default ``name``).

    ``parameters`` are JSON-compatible declarations (for example the file types a scanner handles);
    they are stored in the registry's ``plugin_capabilities`` table.
    """

    name: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    method: str = ""

    def __post_init__(self) -> None:
        validate_capability_name(self.name)
        try:
            frozen = _freeze_json(dict(self.parameters), f"capability {self.name!r} parameters")
        except (TypeError, ValueError) as exc:
            raise InvalidPluginError(str(exc), field="capabilities") from None
        object.__setattr__(self, "parameters", frozen)
        method = self.method or self.name
        if not method.isidentifier() or method.startswith("_"):
            raise InvalidPluginError(
                f"capability {self.name!r} maps to method {method!r}, which is not a public Python identifier",
                field="capabilities",
            )
        object.__setattr__(self, "method", method)

    @property
    def is_well_known(self) -> bool:
        """Whether the name is one of the seed's well-known capabilities."""
        return self.name in WELL_KNOWN_CAPABILITIES


class Capabilities(Mapping[str, Capability]):
    """An immutable set of declared capabilities, keyed by name. Build with ``Capabilities.of(...)``."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[Capability] = ()) -> None:
        by_name: dict[str, Capability] = {}
        for cap in items:
            if not isinstance(cap, Capability):
                raise InvalidPluginError(
                    f"capabilities must be Capability objects or names, got {cap!r}", field="capabilities"
                )
            if cap.name in by_name:
                raise InvalidPluginError(f"capability {cap.name!r} is declared twice", field="capabilities")
            by_name[cap.name] = cap
        self._items: Mapping[str, Capability] = MappingProxyType(by_name)

    @classmethod
    def of(cls, *items: str | Capability) -> Capabilities:
        """Build from names and/or Capability objects: ``Capabilities.of("scan", Capability("x", {...}))``."""
        return cls(Capability(i) if isinstance(i, str) else i for i in items)

    def __getitem__(self, name: str) -> Capability:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Capabilities.of({', '.join(repr(n) for n in self._items)})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Capabilities):
            return dict(self._items) == dict(other._items)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._items)))

    @property
    def names(self) -> tuple[str, ...]:
        """The declared names, in declaration order."""
        return tuple(self._items)


@runtime_checkable
class Plugin(Protocol):
    """What the host needs of a plugin (the seed's IPlugin).

    ``initialize``, ``start`` and ``stop`` may be plain methods or ``async def``; so may the capability
    methods, each of which takes one payload argument and returns the result. Subclass
    :class:`plugin_pool.sdk.PluginBase` for sensible defaults.
    """

    @property
    def info(self) -> PluginInfo: ...

    @property
    def capabilities(self) -> Capabilities: ...

    def initialize(self, context: PluginContext) -> Awaitable[None] | None: ...

    def start(self) -> Awaitable[None] | None: ...

    def stop(self) -> Awaitable[None] | None: ...
