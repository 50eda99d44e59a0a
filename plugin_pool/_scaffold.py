"""``plugin-pool new NAME``: a plugin folder that passes its own test at once.

The folder holds a manifest (``plugin.toml``), the plugin's code, a test that uses :mod:`plugin_pool.testing`
and a README. An Untrusted plugin's test drives the folder through the real sandbox
(:meth:`plugin_pool.testing.PluginHarness.from_folder`: confined workers, payloads that cross the boundary,
precise errors); a Trusted plugin's test drives the object in-process (:class:`PluginHarness`), as the host
runs a signed Trusted folder.
"""

from __future__ import annotations

import keyword
import os
import re
from pathlib import Path

from plugin_pool.errors import ConfigError
from plugin_pool.manifest import read_manifest
from plugin_pool.model import is_valid_plugin_id

__all__ = ["TRUST_CHOICES", "new_plugin"]

TRUST_CHOICES = ("trusted", "untrusted")

_MANIFEST = """\
# The plugin's manifest: the host reads it as data{untrusted_note}.
[plugin]
id = "{plugin_id}"
name = "{title}"
version = "0.1.0"
trust_level = "{trust}"
entry = "{module}:{cls}"
description = "Counts words and finds the words it is configured to look for."

[capabilities.scan]              # one table per capability the plugin serves
media_types = ["text/plain"]
{pool}
# Dependencies live inside the folder (hashed and signed with it); uncomment, list them pinned with
# --hash in requirements.txt, then run: plugin-pool vendor {folder}
# [python]
# path = ["_vendor"]
# requirements = "requirements.txt"
"""

_POOL = """
[pool]                           # sandbox workers of this plugin
min_workers = 1
max_workers = 2
"""

_CODE = '''\
"""{title}: a {trust} plugin made by ``plugin-pool new``; edit ``scan`` to do the real work."""

from __future__ import annotations

from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class {cls}(PluginBase):
    info = PluginInfo(
        id="{plugin_id}",
        name="{title}",
        version="0.1.0",
        trust_level=TrustLevel.{level},
        description="Counts words and finds the words it is configured to look for.",
    )

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.keywords = [str(k).lower() for k in self.config.get("keywords", ["secret"])]

    @capability("scan", parameters={{"media_types": ["text/plain"]}})
    def scan(self, text: str) -> dict[str, Any]:
        if not isinstance(text, str):
            raise TypeError(f"scan expects text, got {{type(text).__name__}}")
        words = text.lower().split()
        return {{"words": len(words), "found": sorted({{w for w in words if w in self.keywords}})}}
'''

_TEST_UNTRUSTED = '''\
"""The plugin as the host runs it: its folder through the real sandbox (confined workers, payloads that
cross the process boundary, the errors a scanning service sees). Run: python -m pytest {folder}"""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin_pool import PluginCallError, PayloadError
from plugin_pool.testing import PluginHarness

FOLDER = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def harness():
    with PluginHarness.from_folder(FOLDER, config={{"keywords": ["secret", "token"]}}) as running:
        yield running


def test_scan_counts_words_and_finds_keywords(harness: PluginHarness) -> None:
    assert harness.invoke("scan", "a Secret and a token") == {{"words": 5, "found": ["secret", "token"]}}


def test_a_bad_input_is_a_precise_error(harness: PluginHarness) -> None:
    with pytest.raises(PluginCallError, match="scan expects text") as raised:
        harness.invoke("scan", 42)
    assert raised.value.remote_type == "TypeError"


def test_only_json_values_or_bytes_cross_the_boundary(harness: PluginHarness) -> None:
    with pytest.raises(PayloadError):
        harness.invoke("scan", float("nan"))


def test_the_lifecycle(harness: PluginHarness) -> None:
    assert harness.states[:4] == ["discovered", "loading", "initializing", "active"]
'''

_TEST_TRUSTED = '''\
"""The plugin in-process, as the host runs a signed Trusted folder. Run: python -m pytest {folder}"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from plugin_pool import PluginCallError
from plugin_pool.testing import PluginHarness

_spec = importlib.util.spec_from_file_location("{module}", Path(__file__).with_name("{module}.py"))
assert _spec is not None and _spec.loader is not None
plugin_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugin_module)


def test_scan_counts_words_and_finds_keywords() -> None:
    with PluginHarness(plugin_module.{cls}(), config={{"keywords": ["secret", "token"]}}) as harness:
        assert harness.invoke("scan", "a Secret and a token") == {{"words": 5, "found": ["secret", "token"]}}
    assert harness.states == ["discovered", "loading", "initializing", "active", "stopping", "stopped"]


def test_a_bad_input_is_a_precise_error() -> None:
    with PluginHarness(plugin_module.{cls}()) as harness, pytest.raises(PluginCallError, match="scan expects text"):
        harness.invoke("scan", 42)
'''

_README = """\
# {title}

A{n} {trust} plugin for plugin_pool, made by `plugin-pool new {plugin_id}{trust_flag}`.

- `plugin.toml`: the manifest (id, trust level, entry, capabilities{pool_note}).
- `{module}.py`: the plugin: `scan(text)` counts words and finds configured keywords. Edit it.
- `test_{module}.py`: its test, {how_tested}.

## Develop

```
python -m pytest {folder}                        # the plugin's own test
plugin-pool vendor {folder}                      # after adding [python] requirements: dependencies inside
plugin-pool hash {folder} --files                # what the host will hash (and sign)
```
{trust_section}
## Run it in a host

```toml
{config}
```

```
plugin-pool run plugin_pool.toml --capability scan
```
"""

_UNTRUSTED_SECTION = """
An Untrusted plugin runs only in confined sandbox workers: no network, no files but its own folder and a
private /tmp, no new processes, payloads and results as JSON values or bytes. Its dependencies must be inside
the folder (`[python] path`, filled by `plugin-pool vendor`): the workers cannot import what the host's
environment has installed for itself.
"""

_TRUSTED_SECTION = """
## Sign it

A Trusted folder runs in the host process, so it loads only with a valid signature by a key the host trusts
(`[trust] trusted_keys`):

```
plugin-pool keygen --private vendor.pem --public vendor.pub
plugin-pool sign {folder} --key vendor.pem          # again after every change
plugin-pool verify {folder} --trusted-key vendor.pub
```
"""


def new_plugin(name: str, parent: Path | str = ".", *, trust: str = "trusted") -> Path:
    """Write a new plugin folder ``parent/<name with '-' as '_'>`` and return it. Blocks briefly.

    ``name`` is the plugin id (1-63 characters: lowercase letters, digits, '-', '_' and '.', a letter
    first). Raises ConfigError for an invalid name or trust level, or when the folder already exists (nothing is
    overwritten). The folder passes its own test at once: ``python -m pytest FOLDER``.
    """
    if trust not in TRUST_CHOICES:
        raise ConfigError(f"--trust {trust!r} is invalid: expected one of {', '.join(TRUST_CHOICES)}", key="--trust")
    if not is_valid_plugin_id(name):
        raise ConfigError(
            f"plugin name {name!r:.80} is not a valid plugin id: use lowercase letters, digits, '-', '_' or '.', "
            f"a letter first (for example 'word-counter')",
            key="NAME",
        )
    module = re.sub(r"[^0-9a-zA-Z_]", "_", name).lower()
    if keyword.iskeyword(module) or not module.isidentifier():
        module = f"plugin_{module}"
    cls = "".join(part.capitalize() for part in re.split(r"[^0-9a-zA-Z]+", name) if part) or "Plugin"
    if not cls[0].isalpha():
        cls = f"Plugin{cls}"
    folder = Path(parent) / module
    if folder.exists():
        raise ConfigError(f"{folder} already exists; choose another name or remove it", key="NAME")
    untrusted = trust == "untrusted"
    shown = os.path.relpath(folder)
    title = " ".join(part.capitalize() for part in re.split(r"[-_.]+", name) if part)
    values = {
        "plugin_id": name,
        "title": title,
        "module": module,
        "cls": cls,
        "trust": trust,
        "level": trust.upper(),
        "folder": shown,
    }
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text(
        _MANIFEST.format(
            **values,
            untrusted_note="; its code runs only in sandbox workers, never in the host" if untrusted else "",
            pool=_POOL if untrusted else "",
        ),
        encoding="utf-8",
    )
    (folder / f"{module}.py").write_text(_CODE.format(**values), encoding="utf-8")
    test = _TEST_UNTRUSTED if untrusted else _TEST_TRUSTED
    (folder / f"test_{module}.py").write_text(test.format(**values), encoding="utf-8")
    config = (
        f'[plugins.{name}]\npath = "{shown}"\nconfig = {{ keywords = ["secret", "token"] }}'
        if untrusted
        else f'[discovery]\npaths = ["{os.path.relpath(folder.parent)}"]\n\n[trust]\ntrusted_keys = ["vendor.pub"]'
        f'\n\n[plugins.{name}]\nconfig = {{ keywords = ["secret", "token"] }}'
    )
    (folder / "README.md").write_text(
        _README.format(
            **values,
            n="n" if untrusted else "",
            trust_flag=" --trust untrusted" if untrusted else "",
            pool_note=", sandbox pool sizes" if untrusted else "",
            how_tested="through the real sandbox (`PluginHarness.from_folder`)"
            if untrusted
            else "in-process (`PluginHarness`)",
            trust_section=_UNTRUSTED_SECTION if untrusted else _TRUSTED_SECTION.format(**values),
            config=config,
        ),
        encoding="utf-8",
    )
    read_manifest(folder)  # what was written is a valid manifest (a bug here would fail loudly, not later)
    return folder
