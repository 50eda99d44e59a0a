"""The one rule for sandbox pool bounds (``min_workers``, ``max_workers``, ``max_total_workers``).

The shape of psycopg_pool's ``_check_size``, used by its constructor and ``resize``: one check, called by
``load_config`` (so ``plugin-pool config check`` and SIGHUP reloads), the manifest reader's ``[pool]``, the
sandbox pool's start, resize and limit updates, and ``PluginHost.resize_pool``/``apply_pool_sizes``.
Nothing is clamped silently. Pure; imports only the errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from plugin_pool.errors import ConfigError

__all__ = ["check_pool_size", "resolve_pool_size"]


def check_pool_size(
    min_workers: int,
    max_workers: int,
    *,
    max_total_workers: int | None = None,
    where: str = "sandbox",
    source: str | None = None,
) -> tuple[int, int]:
    """The one rule for pool bounds; return ``(min_workers, max_workers)`` unchanged when they hold.

    Both are whole numbers of at least 1, ``min_workers <= max_workers`` and, when ``max_total_workers`` is
    given (at least 1), ``min_workers <= max_total_workers``: a plugin can never start more workers than
    the cap of all workers together. Nothing is clamped: a bad pair raises :class:`ConfigError` naming
    ``where`` (``sandbox``, ``plugins.<id>``, a manifest's ``[pool]``, ``resize``) and ``source``. Used
    by ``load_config`` (so ``plugin-pool config check`` and SIGHUP reloads), the manifest reader,
    ``PluginHost.resize_pool``/``apply_pool_sizes`` and the sandbox pool. Pure; safe to call twice.
    """
    origin = f" in {source}" if source else ""
    values = {"min_workers": min_workers, "max_workers": max_workers}
    if max_total_workers is not None:
        values["max_total_workers"] = max_total_workers
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(
                f"{where}.{key} = {value!r}{origin} is invalid: expected a whole number of workers, at least 1",
                key=f"{where}.{key}",
                source=source,
            )
    if max_workers < min_workers:
        raise ConfigError(
            f"{where}.max_workers = {max_workers} is below {where}.min_workers = {min_workers}{origin}; a pool "
            f"cannot keep more workers than it may have: raise max_workers or lower min_workers",
            key=f"{where}.max_workers",
            source=source,
        )
    if max_total_workers is not None and min_workers > max_total_workers:
        raise ConfigError(
            f"{where}.min_workers = {min_workers} is above sandbox.max_total_workers = {max_total_workers}"
            f"{origin}; no plugin could start: lower min_workers or raise max_total_workers",
            key=f"{where}.min_workers",
            source=source,
        )
    return min_workers, max_workers


def resolve_pool_size(
    plugin_id: str, sources: Sequence[tuple[str, Mapping[str, int | None]]]
) -> tuple[tuple[int, int], str | None]:
    """An Untrusted plugin's ``(min_workers, max_workers)`` from its sources, most specific first, and a note.

    ``sources`` pairs a name (``plugins.<id>``, ``<manifest> [pool]``, ``sandbox``) with the bounds it sets
    (a key missing or None is not set there); each key comes from the first source that sets it. Two keys
    from the same source are checked by :func:`check_pool_size` (a ConfigError naming that source). When
    they come from different sources and disagree, the more specific source wins and the other bound moves
    to it (``min_workers = 4`` for one plugin under a default ``max_workers = 2`` gives 4..4); the note
    then says so, for the caller to log, and is None otherwise. Pure; raises ConfigError.
    """
    chosen: dict[str, tuple[int, int]] = {}  # key -> (index of the source, value)
    for index, (_, bounds) in enumerate(sources):
        for key in ("min_workers", "max_workers"):
            value = bounds.get(key)
            if key not in chosen and value is not None:
                chosen[key] = (index, value)
    for key in ("min_workers", "max_workers"):
        if key not in chosen:
            raise ConfigError(f"plugin {plugin_id!r}: none of its pool sources sets {key}", key=key)
    (low_at, low), (high_at, high) = chosen["min_workers"], chosen["max_workers"]
    if low_at == high_at:
        return check_pool_size(low, high, where=sources[low_at][0]), None
    check_pool_size(low, low, where=sources[low_at][0])
    check_pool_size(high, high, where=sources[high_at][0])
    if high >= low:
        return (low, high), None
    if low_at < high_at:
        note = (
            f"plugin {plugin_id!r}: {sources[low_at][0]}.min_workers = {low} is above "
            f"{sources[high_at][0]}.max_workers = {high}; the more specific minimum wins: pool {low}..{low}"
        )
        return (low, low), note
    note = (
        f"plugin {plugin_id!r}: {sources[high_at][0]}.max_workers = {high} is below "
        f"{sources[low_at][0]}.min_workers = {low}; the more specific maximum wins: pool {high}..{high}"
    )
    return (high, high), note
