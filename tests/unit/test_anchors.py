"""One class of bug, every instance: a validator anchored with ``$`` also accepts a trailing newline.

Each validation pattern of the package is applied with ``fullmatch``; this feeds each one a valid value
with a newline appended and expects a refusal that names the field.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import plugin_pool
from plugin_pool.errors import InvalidPluginError, RegistryError, SignatureError
from plugin_pool.integrity import key_id, sign_plugin, verify_plugin
from plugin_pool.model import Capability, validate_plugin_id
from plugin_pool.registry.postgres import _check_schema

PACKAGE = Path(plugin_pool.__file__).parent


def test_no_validation_pattern_in_the_package_is_anchored_with_a_dollar() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_proto" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "re.compile(" in line and re.search(r"\$[\"']", line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize(
    "check",
    [
        lambda: validate_plugin_id("hello\n"),
        lambda: Capability("scan\n"),
    ],
    ids=["plugin-id", "capability"],
)
def test_model_validators_refuse_a_trailing_newline(check: object) -> None:
    with pytest.raises(InvalidPluginError) as caught:
        check()  # type: ignore[operator]
    assert caught.value.field in ("id", "capabilities")


def test_the_registry_schema_name_refuses_a_trailing_newline() -> None:
    assert _check_schema("plugin_pool") == "plugin_pool"
    with pytest.raises(RegistryError, match="schema name 'plugin_pool\\\\n' is invalid"):
        _check_schema("plugin_pool\n")


@pytest.mark.parametrize("key", ["key_id", "content_hash"])
def test_signature_fields_refuse_a_trailing_newline(tmp_path: Path, key: str) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "plugin.toml").write_text(
        '[plugin]\nid = "p"\nname = "P"\nversion = "1"\ntrust_level = "trusted"\nentry = "m:P"\n\n[capabilities.scan]\n'
    )
    private = Ed25519PrivateKey.generate()
    keys = {key_id(private.public_key()): private.public_key()}
    sign_plugin(folder, private)
    manifest = folder / "plugin.toml"
    text = manifest.read_text()
    start = text.index(f'{key} = "') + len(f'{key} = "')
    end = text.index('"', start)
    manifest.write_text(text[:end] + "\\n" + text[end:])
    with pytest.raises(SignatureError) as caught:
        verify_plugin(folder, keys)
    assert caught.value.reason == "malformed" and caught.value.field == "signature"
