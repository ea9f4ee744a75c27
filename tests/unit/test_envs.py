"""Every ``VLLM_POC_*`` setting: parsing, defaults, and the README's settings table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vllm_poc import envs, setting

README = Path(__file__).resolve().parents[2] / "README.md"
NAMES = sorted(envs.SETTINGS)
BOOL_NAMES = [n for n in NAMES if isinstance(envs.SETTINGS[n].default, bool)]
SAMPLE = {bool: ("yes", True), int: ("7", 7), float: ("2.5", 2.5), str: ("a,b", "a,b")}
SAMPLE_OF = {
    "VLLM_POC_BATCH_SIZE": ("7", 7),
    "VLLM_POC_WEIGHTS_FINGERPRINT": ("0", False),
    "VLLM_POC_COMPILED_FORWARD": ("0", False),
    "VLLM_POC_PROTOCOL": (" Artifact", "artifact"),
    "VLLM_POC_INFERENCE_DURING_VALIDATION": ("yes", True),
    "VLLM_POC_ALLOWED_CLIENTS": ("10.0.0.0/8, 127.0.0.1", "10.0.0.0/8,127.0.0.1/32"),
}
"""Settings whose values are not of their default's type (``auto`` or a number), or whose
sample must differ from a true default."""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in envs.SETTINGS:
        monkeypatch.delenv(name, raising=False)


def test_every_setting_is_registered_under_its_own_name():
    assert NAMES
    for name, declared in envs.SETTINGS.items():
        assert declared.name == name
        assert name.startswith("VLLM_POC_")
        assert declared.help.strip()


@pytest.mark.parametrize("name", NAMES)
def test_unset_gives_the_default(name):
    assert envs.get(name) == envs.SETTINGS[name].default


@pytest.mark.parametrize("raw", ["", "  ", "\t"])
@pytest.mark.parametrize("name", NAMES)
def test_blank_gives_the_default(monkeypatch, name, raw):
    monkeypatch.setenv(name, raw)
    assert envs.get(name) == envs.SETTINGS[name].default


@pytest.mark.parametrize("name", NAMES)
def test_value_parses_from_the_environment(monkeypatch, name):
    default = envs.SETTINGS[name].default
    raw, expected = SAMPLE_OF.get(name) or SAMPLE[type(default)]
    monkeypatch.setenv(name, raw)
    value = envs.get(name)
    assert value == expected
    assert value != default
    assert type(value) is type(expected)


@pytest.mark.parametrize(("raw", "expected"), [("auto", "auto"), (" AUTO ", "auto"), ("16", 16)])
def test_batch_size_is_auto_or_a_number(monkeypatch, raw, expected):
    monkeypatch.setenv("VLLM_POC_BATCH_SIZE", raw)
    assert envs.get("VLLM_POC_BATCH_SIZE") == expected


@pytest.mark.parametrize("raw", ["0", "-3", "1.5", "automatic"])
def test_batch_size_rejects_other_values(monkeypatch, raw):
    monkeypatch.setenv("VLLM_POC_BATCH_SIZE", raw)
    with pytest.raises(ValueError):
        envs.get("VLLM_POC_BATCH_SIZE")


@pytest.mark.parametrize("name", NAMES)
def test_the_default_round_trips_through_its_parser(name):
    setting = envs.SETTINGS[name]
    assert setting.parse(str(setting.default)) == setting.default


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "True", "yes", "YES", "on", "On", " on "])
@pytest.mark.parametrize("name", BOOL_NAMES)
def test_booleans_accept_truthy_spellings(monkeypatch, name, raw):
    monkeypatch.setenv(name, raw)
    assert envs.get(name) is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "off", "2", "enabled"])
@pytest.mark.parametrize("name", BOOL_NAMES)
def test_booleans_are_false_words_or_refused(monkeypatch, name, raw):
    """A typo must not silently turn a switch off: only the false words are false."""
    monkeypatch.setenv(name, raw)
    if raw.lower() in setting.FALSE:
        assert envs.get(name) is False
    else:
        with pytest.raises(setting.BadSetting, match=name):
            envs.get(name)


def test_numbers_that_do_not_parse_raise(monkeypatch):
    monkeypatch.setenv("VLLM_POC_BATCH_SIZE", "many")
    with pytest.raises(ValueError):
        envs.get("VLLM_POC_BATCH_SIZE")


def test_settings_are_read_on_every_access(monkeypatch):
    monkeypatch.setenv("VLLM_POC_SEQ_LEN", "64")
    assert envs.get("VLLM_POC_SEQ_LEN") == 64
    monkeypatch.setenv("VLLM_POC_SEQ_LEN", "128")
    assert envs.get("VLLM_POC_SEQ_LEN") == 128


def test_enabled_follows_the_toggle(monkeypatch):
    assert envs.enabled() is False
    monkeypatch.setenv("VLLM_POC_ENABLED", "1")
    assert envs.enabled() is True
    monkeypatch.setenv("VLLM_POC_ENABLED", "off")
    assert envs.enabled() is False


def test_unknown_setting_is_a_key_error():
    with pytest.raises(KeyError):
        envs.get("VLLM_POC_NO_SUCH_SETTING")


# ---------------------------------------------------------------- README settings table


def _readme_table() -> dict[str, str]:
    """``{name: default}`` of the README rows that start with "| `VLLM_POC_"."""
    rows = {}
    for line in README.read_text().splitlines():
        if not line.startswith("| `VLLM_POC_"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([A-Z0-9_]+)`", cells[0])
        default = re.fullmatch(r"`([^`]*)`", cells[1])
        assert name and default, f"malformed README settings row: {line!r}"
        assert name.group(1) not in rows, f"{name.group(1)} is listed twice in the README"
        rows[name.group(1)] = default.group(1)
    return rows


def _as_written(default: object) -> str:
    return str(default).lower() if isinstance(default, bool) else str(default)


def test_readme_table_is_found():
    assert "VLLM_POC_ENABLED" in _readme_table()


def test_readme_lists_exactly_the_settings():
    listed = set(_readme_table())
    assert sorted(set(envs.SETTINGS) - listed) == [], "settings missing from the README"
    assert sorted(listed - set(envs.SETTINGS)) == [], "README lists unknown settings"


def test_readme_defaults_match_the_settings():
    table = _readme_table()
    wrong = {
        name: (table[name], _as_written(setting.default))
        for name, setting in envs.SETTINGS.items()
        if name in table and table[name] != _as_written(setting.default)
    }
    assert wrong == {}, "README default vs envs.py default"


def test_an_unknown_protocol_is_refused(monkeypatch):
    monkeypatch.setenv("VLLM_POC_PROTOCOL", "artefact")
    with pytest.raises(ValueError, match="'distance' or 'artifact'"):
        envs.get("VLLM_POC_PROTOCOL")


def test_a_setting_declared_twice_is_refused() -> None:
    one = setting.Setting("VLLM_POC_X", 1, int, "x")
    with pytest.raises(ValueError, match="VLLM_POC_X"):
        setting.by_name([one, setting.Setting("VLLM_POC_X", 2, int, "again")])


@pytest.mark.parametrize(
    ("name", "raw", "allowed"),
    [
        ("VLLM_POC_RPC_TIMEOUT", "abc", "a number"),
        ("VLLM_POC_ENABLED", "tru", "1, 0, true"),
        ("VLLM_POC_BATCH_SIZE", "0", "auto or an integer"),
        ("VLLM_POC_PROTOCOL", "decode", "distance or artifact"),
        ("VLLM_POC_ALLOWED_CLIENTS", "10.0.0.0/33", "CIDR"),
        ("VLLM_POC_INFERENCE_DURING_VALIDATION", "sometimes", "auto or a boolean"),
    ],
)
def test_a_bad_value_refuses_start_naming_the_variable(monkeypatch, name, raw, allowed):
    """``register()`` parses every setting that is set: the server stops at start."""
    from vllm_poc import plugin

    monkeypatch.setenv(name, raw)
    with pytest.raises(setting.BadSetting) as refused:
        plugin.register()
    message = str(refused.value)
    assert name in message and repr(raw) in message and allowed in message


def test_unknown_names_are_returned_as_likely_typos(monkeypatch):
    monkeypatch.setenv("VLLM_POC_RPC_TIMOUT", "5")
    monkeypatch.setenv("VLLM_POC_RPC_TIMEOUT", "5")
    unknown = envs.check()
    assert "VLLM_POC_RPC_TIMOUT" in unknown and "VLLM_POC_RPC_TIMEOUT" not in unknown


def test_the_typed_attributes_are_the_settings():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(envs))
    (block,) = [
        n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
    ]
    declared = [s.target.id for s in block.body if isinstance(s, ast.AnnAssign)]
    assert declared == list(envs.SETTINGS)
    assert envs.get("VLLM_POC_SEQ_LEN") == envs.VLLM_POC_SEQ_LEN
