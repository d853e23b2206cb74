"""The package's shape: no import cycle, imports at module top, short functions, one home per table
contract, registries instead of name comparisons in the workflow."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from conftest import REPO

from lesiontrack import tables
from lesiontrack.data.datasets import DATASETS
from lesiontrack.track import predict, trackers
from lesiontrack.track.trackers import TRACKERS

PACKAGE = REPO / "lesiontrack"
MAX_FUNCTION_LINES = 120


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = (path, ast.parse(path.read_text(), str(path)))
    return modules


def _imported(name: str, path: Path, node: ast.AST) -> list[str]:
    """The package modules an import node names (``from a import b``: ``a`` and ``a.b``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
        return [base, *(f"{base}.{a.name}" for a in node.names)]
    return []


def _type_checking_blocks(tree: ast.Module) -> set[int]:
    """Line numbers of imports under ``if TYPE_CHECKING:`` (never run)."""
    lines = set()
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            lines.update(n.lineno for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return lines


def test_no_import_cycle_in_the_package():
    modules = _modules()
    graph = {}
    for name, (path, tree) in modules.items():
        skipped = _type_checking_blocks(tree)
        graph[name] = {m for node in ast.walk(tree) if getattr(node, "lineno", None) not in skipped
                       for m in _imported(name, path, node) if m in modules and m != name}
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for dependency in sorted(graph[module]):
            if state.get(dependency) == 1:
                cycles.append(" -> ".join([*trail[trail.index(dependency):], dependency]))
            elif dependency not in state:
                visit(dependency, [*trail, dependency])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_package_imports_sit_at_module_top():
    """Lazy imports only for heavy optional libraries, never for the package's own modules."""
    inside = []
    for name, (path, tree) in _modules().items():
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside += [f"{path.relative_to(REPO)}:{node.lineno}" for node in ast.walk(function)
                           if any(m.split(".")[0] == "lesiontrack" for m in _imported(name, path, node))]
    assert not inside, inside


def test_no_function_over_120_lines():
    long = [f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in _modules().values() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


CONTRACT_COLUMNS = {"pair_id", "lesion_id", "direction", "source_image", "target_image", "image_id", "radius_mm",
                    "target_radius_mm", "status", *tables.SOURCE_POINT, *tables.TARGET_POINT, *tables.PRED_POINT}


def test_table_columns_are_listed_in_tables_only():
    """A list of three or more contract columns outside ``lesiontrack/tables.py`` is a second copy
    of a table's contract."""
    copies = []
    for path, tree in _modules().values():
        if path.name == "tables.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.List, ast.Tuple)):
                names = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if len(names & CONTRACT_COLUMNS) >= 3:
                    copies.append(f"{path.relative_to(REPO)}:{node.lineno} {sorted(names & CONTRACT_COLUMNS)}")
    assert not copies, copies


def test_common_smk_asks_the_registries():
    """rules/common.smk names no dataset and no method: it asks the registries."""
    text = (REPO / "rules" / "common.smk").read_text()
    named = [name for name in [*DATASETS, *TRACKERS] if f'"{name}"' in text or f"'{name}'" in text]
    assert not named, named


def test_registries_say_what_each_entry_needs():
    assert list(TRACKERS) == ["identity", "multiscale", "single-scale-fine", "two-scale", "multiscale-paper",
                              "affine", "deformable", "elastix", "hybrid"]
    assert TRACKERS["hybrid"].needs.embeddings and TRACKERS["hybrid"].needs.volumes
    assert not TRACKERS["identity"].needs.embeddings and not TRACKERS["identity"].decides_presence
    assert TRACKERS["multiscale"].needs.embeddings and TRACKERS["deformable"].needs.volumes
    assert not TRACKERS["affine"].needs.embeddings
    # the stored registrations each reads (rule register makes each once per dataset)
    assert {name: tracker.registrations({}) for name, tracker in TRACKERS.items() if tracker.registrations({})} == {
        "affine": ("affine",), "deformable": ("deformable",), "hybrid": ("deformable",)}
    assert TRACKERS["hybrid"].registrations({"hybrid": {"registration": "affine"}}) == ("affine",)
    assert DATASETS["synthetic"].oracle_landmarks and DATASETS["dls"].published
    assert DATASETS["dls"].title.startswith("Table 1") and DATASETS["nlst"].title.startswith("Table 2")


def test_the_documented_new_tracker_is_one_module_and_one_registry_entry(tmp_path, monkeypatch):
    """docs/architecture.md's example tracker, registered, tracks through track_table with no other
    change: two volumes whose centres differ by a known shift."""
    text = (REPO / "docs" / "architecture.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    module_path = tmp_path / "centres.py"
    module_path.write_text(code)
    spec = importlib.util.spec_from_file_location("centres", module_path)
    centres = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(centres)
    monkeypatch.setitem(trackers.TRACKERS, "centres", centres.TRACKERS[0])
    rows = []
    for name, origin in (("a", (0.0, 0.0, 0.0)), ("b", (30.0, -10.0, 5.0))):
        image = sitk.Image(10, 12, 8, sitk.sitkInt16)
        image.SetOrigin(origin)
        image.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
        rows.append({"image_id": name, "path": str(tmp_path / f"{name}.nii.gz")})
    pd.DataFrame(rows).to_csv(tmp_path / "volumes.csv", index=False)
    queries = pd.DataFrame({"pair_id": ["p"], "lesion_id": ["l"], "direction": ["forward"], "source_image": ["a"],
                            "target_image": ["b"], "source_x": [4.0], "source_y": [6.0], "source_z": [2.0]})
    out = predict.track_table(queries, "centres", volume_tables=[tmp_path / "volumes.csv"], progress=False)
    np.testing.assert_allclose(out[["pred_x", "pred_y", "pred_z"]].to_numpy(float), [[34.0, -4.0, 7.0]])
    assert "centres" in trackers.names(volumes=True)
    assert centres.TRACKERS[0].registrations({}) == ()  # what the workflow asks of it
    trackers.check_settings({"hybrid": {"choice_overlap": 0.5}})  # what start-up asks of every tracker, it too
