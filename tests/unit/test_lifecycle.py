"""The lifecycle table: exactly the documented moves are allowed; any other raises naming both states."""

from __future__ import annotations

import itertools

import pytest

from plugin_pool import IllegalTransitionError, PluginState
from plugin_pool.lifecycle import TERMINAL_STATES, TRANSITIONS, check_transition, is_transition_allowed

S = PluginState

# The diagram in plugin_pool/lifecycle.py, written out again so that changing the table is deliberate.
DOCUMENTED_MOVES = {
    (S.DISCOVERED, S.LOADING),
    (S.DISCOVERED, S.FAILED),
    (S.LOADING, S.INITIALIZING),
    (S.LOADING, S.FAILED),
    (S.INITIALIZING, S.ACTIVE),
    (S.INITIALIZING, S.FAILED),
    (S.ACTIVE, S.STOPPING),
    (S.ACTIVE, S.FAILED),
    (S.STOPPING, S.STOPPED),
    (S.STOPPING, S.FAILED),
    (S.STOPPED, S.LOADING),
    (S.FAILED, S.LOADING),
}

ALL_PAIRS = list(itertools.product(PluginState, PluginState))


def test_table_has_exactly_the_documented_moves() -> None:
    table_moves = {(source, target) for source, targets in TRANSITIONS.items() for target in targets}
    assert table_moves == DOCUMENTED_MOVES
    assert set(TRANSITIONS) == set(PluginState)


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[S.ACTIVE] = frozenset()  # type: ignore[index]


@pytest.mark.parametrize(("source", "target"), ALL_PAIRS, ids=[f"{s.value}->{t.value}" for s, t in ALL_PAIRS])
def test_every_pair_is_allowed_iff_in_the_table(source: PluginState, target: PluginState) -> None:
    allowed = target in TRANSITIONS[source]
    assert is_transition_allowed(source, target) is allowed
    if allowed:
        assert check_transition(source, target, plugin_id="hello") is None
        return
    with pytest.raises(IllegalTransitionError) as caught:
        check_transition(source, target, plugin_id="hello")
    error = caught.value
    assert (error.source, error.target, error.plugin_id) == (source, target, "hello")
    assert f"plugin 'hello' cannot move from {source.value} to {target.value}" in str(error)


def test_illegal_transition_without_plugin_id_says_a_plugin() -> None:
    with pytest.raises(IllegalTransitionError, match=r"^a plugin cannot move from active to loading") as caught:
        check_transition(S.ACTIVE, S.LOADING)
    assert caught.value.plugin_id is None


def test_no_state_moves_to_itself() -> None:
    assert [s for s in PluginState if is_transition_allowed(s, s)] == []


def test_every_state_but_the_terminal_ones_can_fail() -> None:
    assert {s for s in PluginState if not is_transition_allowed(s, S.FAILED)} == {S.FAILED, S.STOPPED}
    assert {S.FAILED, S.STOPPED} == TERMINAL_STATES


def test_terminal_states_can_only_be_loaded_again() -> None:
    assert {s: TRANSITIONS[s] for s in TERMINAL_STATES} == {S.STOPPED: {S.LOADING}, S.FAILED: {S.LOADING}}


@pytest.mark.parametrize(("text", "state"), [("active", S.ACTIVE), ("Failed", S.FAILED), ("DISCOVERED", S.DISCOVERED)])
def test_parse_is_case_insensitive(text: str, state: PluginState) -> None:
    assert PluginState.parse(text) is state


def test_parse_returns_a_state_unchanged() -> None:
    assert PluginState.parse(S.STOPPING) is S.STOPPING


@pytest.mark.parametrize("bad", ["running", "", 3, None])
def test_parse_names_the_bad_value_and_every_allowed_one(bad: object) -> None:
    allowed = "discovered, loading, initializing, active, stopping, stopped, failed"
    with pytest.raises(ValueError, match=f"unknown plugin state {bad!r}; expected one of: {allowed}"):
        PluginState.parse(bad)  # type: ignore[arg-type]


def test_state_values_are_the_lowercase_names() -> None:
    assert [s.value for s in PluginState] == [s.name.lower() for s in PluginState]
