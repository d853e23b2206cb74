"""Code fingerprints, and the machine a model was trained on.

Rules pass ``fingerprint("lesiontrack.preprocess")`` as a param, so editing a module reruns the
rules that (transitively) import it and no others. :func:`machine` names what decides a trained
model's last digits besides code, data and seed: the CPU and the kernels torch picks for it.
"""

from __future__ import annotations

import ast
import hashlib
import platform
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


def _cpu_name() -> str:
    """The CPU's model name, with family and model number where Linux reports them (one "AMD
    EPYC" name covers generations whose kernels differ)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not line.strip():
                break  # the first processor's block is enough
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def machine(device: str = "cpu") -> dict[str, str | int]:
    """What a pretraining checkpoint records of the machine that trained it: CPU, torch's version
    and the CPU kernels it dispatches to (AVX2, AVX512, ...), its threads, and the GPU where one
    trained. The same code, data and seed repeat a model to the bit on one such machine; across
    machines whose kernels differ the weights differ in their last digits and the embedding rows
    can move by a lesion."""
    import torch

    record: dict[str, str | int] = {"cpu": _cpu_name(), "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
                                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                                    "python": platform.python_version()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return record
