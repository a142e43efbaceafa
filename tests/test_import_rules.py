"""Enforces the one-way import rules of DESIGN §2 by parsing every module's imports (no code is executed)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# package -> top-level packages of ours that it must never import
FORBIDDEN = {
    "core": {"data", "lam", "latent_pretraining", "policy", "configs"},
    "data": {"lam", "latent_pretraining", "policy", "configs"},
    "lam": {"policy", "configs", "latent_pretraining.model", "latent_pretraining.sequence", "latent_pretraining.train"},
    "latent_pretraining": {"lam", "policy", "configs"},
    "policy": {"lam", "configs"},
}


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    violations = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            for banned in FORBIDDEN[package]:
                if name == banned or name.startswith(banned + "."):
                    violations.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not violations, "import rule broken (DESIGN §2):\n" + "\n".join(violations)


def test_no_pickle_or_eval() -> None:
    offenders = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        if ".venv" in path.parts or path.parts[-2] == "tests":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"eval", "exec"}:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {node.func.id}()")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in {"load", "loads"}
                and isinstance(node.value, ast.Name)
                and node.value.id in {"pickle", "cPickle", "dill"}
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not offenders, "\n".join(offenders)
