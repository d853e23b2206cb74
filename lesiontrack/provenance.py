"""Code fingerprints: a hash of the package modules a workflow rule calls.

Rules pass ``fingerprint("lesiontrack.preprocess")`` as a param, so editing a module reruns the
rules that (transitively) import it and no others.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "lesiontrack"


def _module_path(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def modules_used(root: str | Path, *modules: str) -> list[Path]:
    """Source files of ``modules`` and every package module they import, transitively."""
    root = Path(root)
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = _module_path(root, module)
        if path is None:
            continue
        seen[module] = path
        todo.extend(_imports(path, module))
        parts = module.split(".")
        todo.extend(".".join(parts[:k]) for k in range(1, len(parts)))  # parent packages run too
    return sorted(set(seen.values()))


def fingerprint(root: str | Path, *modules: str) -> str:
    """Short sha256 of the sources of ``modules`` and their package imports under ``root``."""
    digest = hashlib.sha256()
    for path in modules_used(root, *modules):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
