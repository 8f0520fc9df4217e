"""Layers point down only: no module of probe imports (at the top or lazily inside a function)
a module of a higher layer. The order is the README's architecture section."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

# highest first; a module belongs to the layer of the longest prefix that names it
LAYERS = (
    ("probe.cli", "probe.experiments", "probe.reproduce", "probe.sweep", "probe.__main__"),
    ("probe.pipeline",),
    ("probe.report",),
    ("probe.probes",),
    ("probe.metrics",),
    ("probe.runs", "probe.external", "probe.external_runs", "probe.denoise"),
    ("probe.train", "probe.optim", "probe.baselines"),
    ("probe.diffusion",),
    ("probe.models",),
    ("probe.diffusion.schedules",),
    ("probe.formats", "probe.checkpoints"),
    ("probe.data",),
    ("probe.config", "probe.artifacts", "probe.locks", "probe.errors", "probe.seeding",
     "probe.allocator", "probe.progress", "probe"),
)


def layer_of(module: str) -> int:
    best, level = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    if level is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and the README")
    return level


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported probe module) for every import in the file, lazy ones included."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base == "probe" or base.startswith("probe."):
                for alias in node.names:  # `from probe import artifacts` names a module
                    name = f"{base}.{alias.name}"
                    found.append((node.lineno, name if _is_module(name) else base))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("probe")]
    return found


def _is_module(name: str) -> bool:
    root = Path(__file__).resolve().parents[1]
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def upward_imports(root: Path) -> list[str]:
    out = []
    for path in sorted((root / "probe").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mine = layer_of(module)
        for line, target in imports(path, module):
            if layer_of(target) < mine:
                out.append(f"{path.relative_to(root)}:{line}: {module} imports {target}")
    return out


def test_no_module_imports_a_higher_layer():
    root = Path(__file__).resolve().parents[1]
    assert upward_imports(root) == []


def test_a_planted_upward_import_is_caught(tmp_path):
    for name, text in {"probe/__init__.py": "", "probe/data/__init__.py": "",
                       "probe/data/sources.py": "def f():\n    from probe.report import plots\n",
                       "probe/report/__init__.py": "", "probe/report/plots.py": ""}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = upward_imports(tmp_path)
    assert len(found) == 1 and "probe.data.sources imports probe.report" in found[0]


def test_every_module_has_a_layer():
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("elsewhere.module")
