"""The import directions of docs/architecture.md, read from the source with ast."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bnn_bench"
ENTRY = ("bnn_bench.cli", "bnn_bench.preflight", "bnn_bench.run", "bnn_bench.build")
# room -> modules it must never import (a prefix matches the module and its submodules)
FORBIDDEN = {
    "bnn_bench.inference": (
        "hydra",
        "omegaconf",
        "wandb",
        "bnn_bench.data",
        "bnn_bench.tracking",
        "bnn_bench.config",
        "bnn_bench.methods",
        "bnn_bench.lifecycle",
        "bnn_bench.report",
        "bnn_bench.plots",
        *ENTRY,
    ),
    "bnn_bench.models": ("bnn_bench.inference", "bnn_bench.methods", *ENTRY),
    "bnn_bench.data": ("bnn_bench.inference", "bnn_bench.models", "bnn_bench.methods", *ENTRY),
    "bnn_bench.methods": ("bnn_bench.cli", "bnn_bench.preflight", "bnn_bench.run"),
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every module `path` imports, at any depth of the file (lazy imports count too)."""
    found = set()
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        for room, banned in FORBIDDEN.items():
            if name != room and not name.startswith(room + "."):
                continue
            for imported in sorted(imports(path, root)):
                if any(imported == b or imported.startswith(b + ".") for b in banned):
                    bad.append(f"{name} imports {imported}")
    return bad


def test_no_forbidden_import_arrows():
    assert violations() == []


def test_the_checker_sees_a_forbidden_arrow(tmp_path):
    # The same check on a copy of the package with one forbidden import added must fail.
    fake = tmp_path / "bnn_bench"
    (fake / "inference").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "inference" / "__init__.py").write_text("")
    (fake / "inference" / "bad.py").write_text("def f():\n    from bnn_bench.data import x\n")
    (fake / "models.py").write_text("import jax\n")
    assert violations(fake) == [
        "bnn_bench.inference.bad imports bnn_bench.data",
        "bnn_bench.inference.bad imports bnn_bench.data.x",
    ]


@pytest.mark.parametrize("name", ["smc", "vi", "hmc", "ensemble", "sgmcmc"])
def test_every_method_is_one_registry_entry(name):
    from bnn_bench.methods import METHODS

    method = METHODS[name]
    assert method.name == name and (PACKAGE / "methods" / f"{name}.py").exists()
    assert (PACKAGE.parent / "conf" / "method" / f"{name}.yaml").exists()
