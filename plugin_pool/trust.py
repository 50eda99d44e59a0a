"""The trust decision: at which level the host runs a plugin. One function, for every way a plugin comes in.

The host decides a plugin's trust level, never the plugin: from its configuration, or from a valid
signature. :func:`decide_trust_level` is the one place the rule lives; admission (objects added in code,
``[plugins.<id>] entry``, entry points, folders from ``[discovery] paths`` or ``[plugins.<id>] path``) and
discovery call it, and nothing else compares trust levels to decide where code runs.

==================  ===========================================================================================
how it comes in     its level
==================  ===========================================================================================
``host.add_plugin``  the ``trust_level`` the call names, else ``[plugins.<id>] trust_level``, else the level its
                    info declares (the host's own code vouches for what it adds)
``[plugins] entry``  ``[plugins.<id>] trust_level`` (``builtin`` or ``trusted``; the configuration requires it)
entry point         ``[plugins.<id>] trust_level``, else ``trusted`` (monitored): listing a distribution in
                    ``[discovery] entry_point_distributions`` trusts its code in-process, not unmonitored
folder              ``untrusted``; ``trusted`` only when the manifest claims it *and* its signature verifies
                    by a key of ``[trust] trusted_keys`` (else rejected, or downgraded to ``untrusted`` with
                    ``[trust] unsigned_trusted = "downgrade"``); never ``builtin``
==================  ===========================================================================================

A plugin class does not need a subclass per level: its ``info.trust_level`` is a default for code the
host adds itself and otherwise only a statement by its author, with one exception: an object whose info
says ``untrusted`` never runs in the host process (its author asks for the sandbox, and the host never
gives more trust than that to code that says it should not have it). It may still run Untrusted from a
plugin folder, in sandbox workers.

Pure: no I/O; the signature itself is verified by :mod:`plugin_pool.integrity`, which says who signed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from plugin_pool.errors import TrustViolationError
from plugin_pool.model import TrustLevel

__all__ = ["TrustDecision", "TrustSource", "UnknownTrust", "decide_trust_level"]


class TrustSource(enum.Enum):
    """How a plugin came to the host (see the table of the module)."""

    CODE = "code"
    """``host.add_plugin(obj)``."""
    ENTRY = "entry"
    """``[plugins.<id>] entry``."""
    ENTRY_POINT = "entry_point"
    """An entry point of an allowed distribution."""
    FOLDER = "folder"
    """A plugin folder (``[discovery] paths``, ``[plugins.<id>] path``, ``host.add_plugin_dir``)."""


class UnknownTrust(enum.Enum):
    """The trust level of a plugin the host refused before it decided one (health shows ``unknown``).

    A rejected folder whose manifest could not be read or whose Trusted claim was not verified, an entry
    point refused before import: the host never decided a level for them, and reports none.
    """

    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class TrustDecision:
    """The level the host runs a plugin at, and why (for discovery reports, logs and audit details)."""

    level: TrustLevel
    reason: str


def decide_trust_level(
    plugin_id: str,
    source: TrustSource,
    *,
    declared: TrustLevel | None = None,
    configured: TrustLevel | str | None = None,
    claimed: TrustLevel | None = None,
    signed_by: str | None = None,
    signature_problem: str | None = None,
    unsigned_trusted: str = "reject",
) -> TrustDecision:
    """Decide the level ``plugin_id`` runs at. Pure; safe to call any number of times.

    ``declared`` is what the plugin object's info says (known once an in-process object is imported;
    None before); ``configured`` the level the host's configuration (or the ``add_plugin`` call) names;
    ``claimed`` a folder manifest's ``trust_level``; ``signed_by`` the trusted key whose signature over the
    folder verified (None when it did not), ``signature_problem`` why it did not; ``unsigned_trusted`` the
    ``[trust]`` policy for a Trusted claim without a valid signature.

    Raises TrustViolationError naming the plugin and the fix when it may not run at all: an in-process
    level for an object that says ``untrusted``, a folder that claims ``builtin``, a Trusted claim without
    a valid signature under the ``reject`` policy, or a source without the input it needs.
    """
    configured_level = TrustLevel.parse(configured) if configured is not None else None
    if source is TrustSource.FOLDER:
        decision = _decide_folder(plugin_id, claimed, signed_by, signature_problem, unsigned_trusted)
    elif source is TrustSource.ENTRY:
        if configured_level is None:
            raise TrustViolationError(
                f"plugin {plugin_id!r}: an entry needs [plugins.{plugin_id}] trust_level ('builtin' or 'trusted')",
                plugin_id=plugin_id,
            )
        decision = TrustDecision(configured_level, f"{configured_level.value}: [plugins.{plugin_id}] trust_level")
    elif source is TrustSource.ENTRY_POINT:
        decision = (
            TrustDecision(configured_level, f"{configured_level.value}: [plugins.{plugin_id}] trust_level")
            if configured_level is not None
            else TrustDecision(
                TrustLevel.TRUSTED, "trusted: an entry point of an allowed distribution (monitored in-process)"
            )
        )
    elif configured_level is not None:
        decision = TrustDecision(configured_level, f"{configured_level.value}: named by the host")
    elif declared is not None:
        decision = TrustDecision(declared, f"{declared.value}: declared by the plugin the host added in code")
    else:
        raise TrustViolationError(f"plugin {plugin_id!r}: no trust level to decide from; name one", plugin_id=plugin_id)
    if declared is TrustLevel.UNTRUSTED and (decision.level.in_process or source is not TrustSource.FOLDER):
        raise TrustViolationError(
            f"plugin {plugin_id!r} is Untrusted by its own info, so its code never runs in the host process "
            f"(the host would run it {decision.level.value}); ship it as a plugin folder with trust_level = "
            f'"untrusted" to run it in the sandbox, or change its info if its author vouches for in-process use',
            plugin_id=plugin_id,
        )
    if source is not TrustSource.FOLDER and not decision.level.in_process:
        raise TrustViolationError(
            f"plugin {plugin_id!r} would be untrusted, and its code would then run in the host process; Untrusted "
            f"code runs only from a plugin folder, in the sandbox",
            plugin_id=plugin_id,
        )
    return decision


def _decide_folder(
    plugin_id: str,
    claimed: TrustLevel | None,
    signed_by: str | None,
    signature_problem: str | None,
    unsigned_trusted: str,
) -> TrustDecision:
    if claimed is None or claimed is TrustLevel.UNTRUSTED:
        return TrustDecision(TrustLevel.UNTRUSTED, "untrusted: declared by its manifest; runs in the sandbox")
    if claimed is TrustLevel.BUILTIN:
        raise TrustViolationError(
            f"plugin folder of {plugin_id!r} claims builtin: a folder runs Untrusted, or Trusted when signed; "
            f"BuiltIn plugins are added in code (host.add_plugin) or configured as an entry",
            plugin_id=plugin_id,
        )
    if signed_by is not None:
        return TrustDecision(TrustLevel.TRUSTED, f"trusted: signed by key {signed_by}")
    why = signature_problem or "unsigned"
    if unsigned_trusted == "downgrade":
        return TrustDecision(TrustLevel.UNTRUSTED, f"untrusted (downgraded: {why})")
    raise TrustViolationError(
        f"claims Trusted but {why}; sign it with a trusted key (plugin-pool sign) or set "
        f'[trust] unsigned_trusted = "downgrade" to run it Untrusted',
        plugin_id=plugin_id,
    )
