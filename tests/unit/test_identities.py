"""Worker uids: one per worker from sandbox.uid_range, claimed with flock so hosts sharing a machine never
hand out the same uid; ranges that hold a user, and full ranges, are errors that say what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin_pool.errors import ConfinementUnavailableError
from plugin_pool.sandbox.identities import WorkerIdentities

RANGE = "1879100000-1879100009"


def opened(lock_dir: Path, uid_range: str = RANGE) -> WorkerIdentities:
    identities = WorkerIdentities(uid_range, lock_dir)
    identities.open()
    return identities


def test_two_hosts_on_one_machine_never_share_a_uid(tmp_path: Path) -> None:
    first, second = opened(tmp_path), opened(tmp_path)
    try:
        claims = [first.claim() for _ in range(5)] + [second.claim() for _ in range(5)]
        uids = [c.uid for c in claims]
        assert len(set(uids)) == 10 and all(1879100000 <= u <= 1879100009 for u in uids)
        assert all(c.gid == c.uid for c in claims)
        with pytest.raises(
            ConfinementUnavailableError, match=f"every uid of sandbox.uid_range {RANGE.replace('-', '-')}"
        ):
            first.claim()
        # A uid given back is free for the other host at once.
        first.release(claims[0])
        assert second.claim().uid == claims[0].uid
    finally:
        first.close()
        second.close()


def test_release_is_idempotent_and_close_frees_everything(tmp_path: Path) -> None:
    identities = opened(tmp_path)
    claim = identities.claim()
    identities.release(claim)
    identities.release(claim)
    assert identities.list_claimed() == []
    held = [identities.claim() for _ in range(3)]
    identities.close()
    other = opened(tmp_path)
    try:
        assert {other.claim().uid for _ in range(10)} >= {c.uid for c in held}
    finally:
        other.close()


def test_a_range_holding_a_user_is_refused_naming_the_user(tmp_path: Path) -> None:
    # uid 65534 is nobody on every Linux: a range around it must be refused, not shared with that account.
    with pytest.raises(ConfinementUnavailableError) as caught:
        opened(tmp_path, "65500-65600")
    assert "holds uid 65534" in str(caught.value) and "choose a range without users" in str(caught.value)


def test_a_lock_directory_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    lock_dir = tmp_path / "uids"
    lock_dir.symlink_to(tmp_path)
    with pytest.raises(ConfinementUnavailableError, match="is not owned by this host's user"):
        opened(lock_dir)
