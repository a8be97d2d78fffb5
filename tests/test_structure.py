"""The house rules of the code layout, checked on every run so a newcomer's map stays true.

flows → tasks → monai_ext, never back up; ``tasks.common`` and ``tasks.imaging`` import no stage package;
no import cycle between modules (lazy imports inside functions count: they only hide a cycle); no folder
over 12 modules, no module over 400 lines, no function over 80 lines; every path ``dvc.yaml`` depends on exists.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import yaml

from tests.conftest import REPO

PACKAGES = ("flows", "tasks", "monai_ext")
SHARED = ("tasks.common", "tasks.imaging")
STAGES = ("tasks.ingest", "tasks.preprocess", "tasks.training", "tasks.evaluation", "tasks.inference", "tasks.pacs",
          "tasks.tracking", "tasks.serving")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ours that ``name`` imports, at the top or inside a function."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, ``level - 1`` packages up
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def test_no_import_cycles():
    edges = graph()
    # a package's __init__ re-exporting its own modules is not a cycle with them
    edges = {m: {t for t in ts if not (m.startswith(t + ".") and (REPO / t.replace(".", "/") / "__init__.py").exists())}
             for m, ts in edges.items()}
    state: dict[str, int] = defaultdict(int)
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state[nxt] == 1:
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif state[nxt] == 0:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(edges):
        if state[module] == 0:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_layers_point_one_way():
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            if module.startswith("monai_ext") and not target.startswith("monai_ext"):
                wrong.append(f"{module} imports {target} (monai_ext stands alone)")
            if module.startswith("tasks") and target.startswith("flows"):
                wrong.append(f"{module} imports {target} (tasks never import flows)")
            if module.startswith(SHARED) and target.startswith(STAGES):
                wrong.append(f"{module} imports {target} (shared pieces import no stage)")
    for path in (REPO / "monai_ext").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for library in ("prefect", "mlflow"):
            if f"import {library}" in text or f"from {library}" in text:
                wrong.append(f"{path.relative_to(REPO)} imports {library} (monai_ext is reusable without it)")
    assert not wrong, "\n".join(sorted(wrong))


def test_sizes_stay_within_the_house_rules():
    too_big = []
    folders: dict[Path, int] = defaultdict(int)
    for path in modules().values():
        if path.name != "__init__.py":
            folders[path.parent] += 1
        source = path.read_text(encoding="utf-8")
        if len(source.splitlines()) > 400:
            too_big.append(f"{path.relative_to(REPO)}: {len(source.splitlines())} lines (> 400)")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80:
                too_big.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}(): "
                               f"{node.end_lineno - node.lineno + 1} lines (> 80)")
    too_big += [f"{folder.relative_to(REPO)}/: {count} modules (> 12)" for folder, count in folders.items()
                if count > 12]
    assert not too_big, "\n".join(sorted(too_big))


def test_dvc_stages_depend_on_paths_that_exist():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    missing = [f"{name}: {dep}" for name, stage in stages.items() for dep in stage.get("deps", [])
               if not dep.startswith(("data", "outputs")) and not (REPO / dep).exists()]
    assert not missing, f"dvc.yaml names paths that do not exist: {missing}"
