"""The Python sources of released vLLM wheels, read without installing them.

A supported release that is not installed here (every minor but the smoked ones, and the
CUDA-only vLLM 0.33) is checked against its wheel from the package index: ``pip download``
without dependencies, only ``vllm/**/*.py`` kept, under ``.cache/vllm-sources`` (or
``VLLM_POC_SOURCES_CACHE``). The queries parse the sources with ``ast``: nothing is imported.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from functools import cache
from pathlib import Path

from vllm_poc.compat.releases import Release

ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("VLLM_POC_SOURCES_CACHE", ROOT / ".cache" / "vllm-sources"))


def sources(release: Release) -> Path:
    """The folder holding ``vllm/`` of ``release``'s wheel (downloaded once)."""
    out = cache_dir() / f"{release.package}-{release.version}"
    if (out / ".complete").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp]
        subprocess.run([*download, "--only-binary=:all:", release.requirement], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        staged = Path(tmp) / "staged"
        with zipfile.ZipFile(wheel) as z:
            z.extractall(
                staged, [n for n in z.namelist() if n.startswith("vllm/") and n.endswith(".py")]
            )
        (staged / ".complete").write_text(release.requirement + "\n")
        shutil.rmtree(out, ignore_errors=True)
        staged.rename(out)
    return out


class Sources:
    """Queries over one release's sources by module and qualified name."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def exists(self, module: str) -> bool:
        return self._path(module) is not None

    def text(self, module: str, qualname: str | None = None) -> str:
        """A module's source, or of one class or function in it."""
        source = self._source(module)
        if qualname is None:
            return source
        return ast.get_source_segment(source, self.node(module, qualname)) or ""

    def node(self, module: str, qualname: str) -> ast.AST:
        """The class or function ``qualname`` (``Class.method``) defined in ``module``."""
        scope: ast.AST = _parse(self._file(module))
        for part in qualname.split("."):
            found = [
                n
                for n in getattr(scope, "body", [])
                if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and n.name == part
            ]
            if not found:
                raise LookupError(f"{module}.{qualname}: no {part}")
            scope = found[-1]
        return scope

    def params(self, module: str, qualname: str) -> list[str]:
        """Parameter names in order (positional, then keyword-only)."""
        node = self.node(module, qualname)
        assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        a = node.args
        return [p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]]

    def kwonly(self, module: str, qualname: str) -> list[str]:
        node = self.node(module, qualname)
        assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        return [p.arg for p in node.args.kwonlyargs]

    def fields(self, module: str, cls: str) -> dict[str, bool]:
        """A dataclass's fields: name -> whether it has a default."""
        node = self.node(module, cls)
        assert isinstance(node, ast.ClassDef)
        return {
            s.target.id: s.value is not None
            for s in node.body
            if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
        }

    def home(self, module: str, name: str) -> str:
        """The module defining ``name`` as seen from ``module``: itself, or the module it
        imports ``name`` from (``from X import name``)."""
        tree = _parse(self._file(module))
        defs = ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        if any(isinstance(node, defs) and node.name == name for node in tree.body):
            return module
        for node in ast.walk(tree):
            imported = isinstance(node, ast.ImportFrom) and node.module
            if imported and any((a.asname or a.name) == name for a in node.names):
                return self._absolute(module, node.module, node.level)
        raise LookupError(f"{module} neither defines nor imports {name}")

    def assigned(self, module: str, cls: str) -> set[str]:
        """Attributes a class's methods assign on ``self`` (also inside tuple targets)."""
        names = set()
        for node in ast.walk(self.node(module, cls)):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            for target in targets:
                for t in ast.walk(target):
                    if (
                        isinstance(t, ast.Attribute)
                        and isinstance(t.value, ast.Name)
                        and t.value.id == "self"
                    ):
                        names.add(t.attr)
        return names

    def _absolute(self, module: str, imported: str, level: int) -> str:
        """``from .x import`` (``level`` dots) in ``module``, as an absolute module name."""
        if not level:
            return imported
        package = module.split(".")
        if self._file(module).name != "__init__.py":
            package = package[:-1]
        return ".".join([*package[: len(package) - (level - 1)], imported])

    def _path(self, module: str) -> Path | None:
        base = self.root / module.replace(".", "/")
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return path
        return None

    def _file(self, module: str) -> Path:
        path = self._path(module)
        if path is None:
            raise LookupError(f"no module {module}")
        return path

    def _source(self, module: str) -> str:
        return self._file(module).read_text()


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text())
