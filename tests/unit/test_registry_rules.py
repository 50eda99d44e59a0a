"""Rules that live in one place and are written down elsewhere: the grants docs/OPERATIONS.md lists are the
ones the code prints and the least-privilege tests use; the plugins view's aggregate order is the fleet's;
the storable form of free text round-trips."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from plugin_pool.registry.fleet import AGGREGATE_ORDER
from plugin_pool.registry.postgres import grant_statements, list_migrations
from plugin_pool.registry.validation import from_storable, to_storable

DOC = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"
ROLES = {"migration": "plugin_pool_migrator", "application": "plugin_pool_app", "readonly": "plugin_pool_reader"}


def test_operations_md_lists_exactly_the_grants_the_code_prints() -> None:
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)
    assert [block.strip().splitlines() for block in blocks] == [grant_statements(k, r) for k, r in ROLES.items()]


def test_the_plugins_view_aggregates_in_the_fleets_order() -> None:
    fleet = next(text for _, name, text in list_migrations() if name == "0003_fleet")
    view = fleet[fleet.index("CREATE VIEW plugins AS") :]
    order = re.findall(r"WHEN n_(\w+) > 0 THEN '(\w+)'", view)
    assert all(column == state for column, state in order)
    assert [state for _, state in order] + ["discovered"] == [s.value for s in AGGREGATE_ORDER]


@pytest.mark.parametrize(
    "text", ["", "plain", "a\x00b", "a\udc80b", "\ue000", "\ue0000041", "x\ue000zz", "\ud800\udc00", "é✓"]
)
def test_free_text_round_trips_through_its_storable_form(text: str) -> None:
    stored = to_storable(text)
    assert "\x00" not in stored
    stored.encode("utf-8")  # storable: valid UTF-8
    assert from_storable(stored) == text
