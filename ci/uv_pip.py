"""usage: ci/uv_pip.py PYTHON install|uninstall ARGS...

Runs ``uv pip`` on the environment of PYTHON with the package sources pip is configured with.

The test environments install vLLM, torch and their ~150 dependencies several times in one CI
run (one venv per release); pip takes about 2.5 minutes for each on 2 cores, uv about 30 s
(byte-compiled too: parallel unpacking and compiling, one cache of unpacked wheels). uv reads
no pip configuration, so the indexes, find-links, constraints and certificate pip would use
(``pip config list``: files and ``PIP_*`` variables) are handed to it here: both installers
then see the same packages, and uv picks among them as pip does (the best match over every
index). uv itself is installed into PYTHON's environment first, with pip, if it is not there.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

UV = "uv==0.13.10"
"""The uv release the environments are built with."""

LIST_OPTIONS = {
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}


def pip_config(python: str) -> dict[str, list[str]]:
    """pip's effective settings, as the pip of PYTHON's environment reads them."""
    listing = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    return parse_pip_config(listing)


def parse_pip_config(listing: str) -> dict[str, list[str]]:
    """``pip config list`` (a ``section.name='value'`` line each, the value as Python's repr)
    as name -> values: a later source overrides an earlier one of the same name (files, then
    the environment), and a value is a whitespace-separated list."""
    settings: dict[str, list[str]] = {}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        if value:
            settings[key.rpartition(".")[2]] = str(ast.literal_eval(value)).split()
    return settings


def uv_arguments(settings: dict[str, list[str]]) -> list[str]:
    """The ``uv pip`` options that give it pip's sources (and pip's choice among them)."""
    args = ["--index-strategy", "unsafe-best-match"]
    if settings.get("index-url"):
        args += ["--index-url", settings["index-url"][-1]]
    for name, option in LIST_OPTIONS.items():
        for value in settings.get(name, []):
            args += [option, value]
    return args


def main(python: str, command: str, *rest: str) -> int:
    uv = Path(python).parent / "uv"
    if not uv.exists():
        subprocess.run([python, "-m", "pip", "install", "-q", UV], check=True)
    settings = pip_config(python)
    env = dict(os.environ)
    if settings.get("cert"):
        env.setdefault("SSL_CERT_FILE", settings["cert"][-1])
    args = [str(uv), "pip", command, "--python", python, "--quiet"]
    if command == "install":
        args += ["--compile-bytecode", *uv_arguments(settings)]
    return subprocess.run([*args, *rest], env=env).returncode


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
