"""Which sandbox layer refused a file (plugin_pool.sandbox._access): the diagnosis a worker appends to the error
the host shows. Pure: files with chosen modes, a view with a non-root uid, no processes."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from plugin_pool.sandbox._access import WorkerView, explain_access_error


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "runtime"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "open.py").write_text("")
    (root / "pkg" / "open.py").chmod(0o644)
    (root / "pkg" / "private.so").write_text("")
    (root / "pkg" / "private.so").chmod(0o600)
    (root / "locked").mkdir(mode=0o700)
    (root / "locked" / "inner.py").write_text("")
    return root


def view(tree: Path, *, private_root: bool = True, landlock: bool = True) -> WorkerView:
    return WorkerView((str(tree),), "/tmp", 4242, 4242, private_root, landlock)


def oserror(code: int, path: Path | str) -> OSError:
    return OSError(code, "refused", str(path))


def test_outside_the_paths_names_the_private_root_or_landlock(tree: Path) -> None:
    text = explain_access_error(oserror(errno.ENOENT, "/opt/site/x.py"), view(tree))
    assert text is not None and "/opt/site/x.py is outside the worker's read-only paths" in text
    assert "private root (mount namespace) and its Landlock rules" in text and "extra_read_paths" in text
    text = explain_access_error(oserror(errno.EACCES, "/opt/site/x.py"), view(tree, private_root=False))
    assert text is not None and "Landlock (the worker's path set)" in text


def test_a_mode_the_uid_cannot_read_names_the_file_and_its_mode(tree: Path) -> None:
    text = explain_access_error(oserror(errno.EACCES, tree / "pkg" / "private.so"), view(tree))
    assert text is not None and "file mode" in text and "private.so has mode 0600" in text and "4242" in text
    text = explain_access_error(oserror(errno.EACCES, tree / "locked" / "inner.py"), view(tree))
    assert text is not None and "the folder" in text and "locked has mode 0700" in text


def test_a_readable_file_refused_is_a_read_only_path(tree: Path) -> None:
    text = explain_access_error(oserror(errno.EACCES, tree / "pkg" / "open.py"), view(tree))
    assert text is not None and "is in a read-only path" in text and "/tmp" in text
    assert "is in a read-only path" in (explain_access_error(oserror(errno.EROFS, tree / "new.txt"), view(tree)) or "")


def test_shared_objects_by_name_and_by_path(tree: Path) -> None:
    by_name = ImportError("libyara.so.10: cannot open shared object file: No such file or directory")
    assert "dynamic loader found no libyara.so.10" in (explain_access_error(by_name, view(tree)) or "")
    by_path = ImportError(f"{tree}/pkg/private.so: cannot open shared object file: Permission denied")
    assert "private.so has mode 0600" in (explain_access_error(by_path, view(tree)) or "")


def test_the_cause_chain_is_searched_and_other_errors_are_left_alone(tree: Path) -> None:
    try:
        try:
            raise oserror(errno.ENOENT, "/srv/data/rules.yar")
        except OSError as exc:
            raise RuntimeError("rules could not be loaded") from exc
    except RuntimeError as wrapped:
        assert "outside the worker's read-only paths" in (explain_access_error(wrapped, view(tree)) or "")
    assert explain_access_error(ValueError("bad"), view(tree)) is None
    assert explain_access_error(oserror(errno.ENOENT, tree / "pkg" / "missing.py"), view(tree)) is None
    assert explain_access_error(oserror(errno.ENOSPC, "/elsewhere"), view(tree)) is None
