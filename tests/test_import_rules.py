"""The module graph as an allowlist: every module's imports (parsed, no code is executed, function-level imports
included) may name only the packages its layer lists.

    core <- data <- latent_pretraining.training <- lam <- latent_pretraining <- policy <- configs

`latent_pretraining.training` (mesh, sharding, optimizer, checkpoints, the loop) is the shared training
infrastructure: the LAM trainer and the VideoLLaMA trainer both run on it, so it sits below `lam`, and it must not
import the rest of `latent_pretraining` (model, sequence, objective, train, ...). The VideoLLaMA trainer gets the
frozen LAM through `lam.api`. `configs/` (presets) may import anything and nothing imports it; scripts/ and tests/
are entry points and are not checked.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
OURS = ("core", "data", "lam", "latent_pretraining", "policy", "configs")

# layer -> the packages (prefixes) of ours it may import; a module belongs to the most specific layer that names it
ALLOWED: dict[str, tuple[str, ...]] = {
    "core": ("core",),
    "data": ("core", "data"),
    "latent_pretraining.training": ("core", "data", "latent_pretraining.training"),
    "lam": ("core", "data", "latent_pretraining.training", "lam"),
    "latent_pretraining": ("core", "data", "lam", "latent_pretraining"),
    "policy": ("core", "data", "lam", "latent_pretraining", "policy"),
    "configs": OURS,
}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _layer(module: str) -> str:
    return max((layer for layer in ALLOWED if _under(module, layer)), key=len)


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path: pathlib.Path) -> set[str]:
    """Modules `path` imports: `from a import b` counts as a.b when b is a module of ours, else as a."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if _is_module(sub) else node.module)
    return names


def violations(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        layer = _layer(module)
        for name in sorted(_imports(path)):
            ours = any(_under(name, p) for p in OURS)  # else third-party / stdlib
            if ours and not any(_under(name, allowed) for allowed in ALLOWED[layer]):
                out.append(f"{rel} ({layer}) imports {name}")
    return out


@pytest.mark.parametrize("package", ["core", "data", "lam", "latent_pretraining", "policy", "configs"])
def test_imports_follow_the_allowlist(package: str) -> None:
    found = violations(package)
    assert not found, "import outside the module graph (tests/test_import_rules.py ALLOWED):\n" + "\n".join(found)


def test_allowlist_catches_a_forbidden_import(tmp_path, monkeypatch) -> None:
    """The checker itself: training -> model and lam -> latent_pretraining.train are refused, lam -> training is not."""
    pkg = tmp_path / "latent_pretraining" / "training"
    pkg.mkdir(parents=True)
    (pkg / "bad.py").write_text("from latent_pretraining.model import llama\nfrom latent_pretraining import train\n")
    (tmp_path / "lam").mkdir()
    (tmp_path / "lam" / "bad.py").write_text("from latent_pretraining import train\n"
                                            "from latent_pretraining.training import loop\nimport policy\n")
    for module in ("latent_pretraining/model/llama.py", "latent_pretraining/train.py",
                   "latent_pretraining/training/loop.py"):
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).touch()
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert violations("latent_pretraining") == [
        "latent_pretraining/training/bad.py (latent_pretraining.training) imports latent_pretraining.model.llama",
        "latent_pretraining/training/bad.py (latent_pretraining.training) imports latent_pretraining.train"]
    assert violations("lam") == ["lam/bad.py (lam) imports latent_pretraining.train", "lam/bad.py (lam) imports policy"]


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
