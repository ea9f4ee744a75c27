"""ci/uv_pip.py hands uv the package sources pip is configured with (uv reads no pip
configuration): if it lost one, CI's environments would be built from other packages than a
pip install here would use, or fail to resolve the CPU torch that only a find-links folder has."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def _uv_pip() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "ci" / "uv_pip.py"
    spec = importlib.util.spec_from_file_location("uv_pip", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LISTING = """\
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'
global.find-links='/opt/old'
global.index-url='https://mirror.example/simple'
install.no-compile=''
:env:.find-links='/opt/wheels'
:env:.extra-index-url='file:///opt/a/simple\\nfile:///opt/c/simple'
"""


def test_pip_settings_are_read_with_the_environment_last() -> None:
    settings = _uv_pip().parse_pip_config(LISTING)
    assert settings["find-links"] == ["/opt/wheels"]
    assert settings["extra-index-url"] == ["file:///opt/a/simple", "file:///opt/c/simple"]
    assert settings["cert"] == ["/etc/ssl/certs/ca-certificates.crt"]
    assert settings["no-compile"] == []


def test_uv_gets_every_source_and_picks_among_them_as_pip_does() -> None:
    uv_pip = _uv_pip()
    args = uv_pip.uv_arguments(uv_pip.parse_pip_config(LISTING))
    assert args == [
        "--index-strategy",
        "unsafe-best-match",
        "--index-url",
        "https://mirror.example/simple",
        "--extra-index-url",
        "file:///opt/a/simple",
        "--extra-index-url",
        "file:///opt/c/simple",
        "--find-links",
        "/opt/wheels",
        "--constraint",
        "/etc/xdg/pip/constraints.txt",
    ]


def test_without_pip_configuration_uv_uses_its_defaults() -> None:
    uv_pip = _uv_pip()
    assert uv_pip.uv_arguments(uv_pip.parse_pip_config("")) == [
        "--index-strategy",
        "unsafe-best-match",
    ]
