"""The library knows nothing of Prefect: importing vae_core must not import it."""

import subprocess
import sys


def test_vae_core_does_not_import_prefect_or_mlflow():
    code = (
        "import sys, vae_core, vae_core.steps.pipeline, vae_core.steps.batch, "
        "vae_core.kinds.choice, "
        "vae_core.cli,"
        " vae_core.foundations.config;"
        "print(sorted(m for m in ('prefect', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _imported_modules(path) -> set[str]:
    """Every vae_core module a source file imports, at the top or inside a function."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # ``from vae_core import batch``: the module batch (a name that is not a module,
            # such as VAEDetector, names nothing in the graph)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("vae_core")}


def test_persistence_does_not_import_the_detector():
    """Saving and loading is the file format; the detector uses it (VAEDetector.load passes
    its class), never the other way round: no import cycle, hidden in a function or not."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "vae_core"
    assert "vae_core.estimator.detector" not in _imported_modules(root / "estimator" / "persist.py")
    assert "vae_core.estimator.persist" in _imported_modules(root / "estimator" / "detector.py")


def test_no_import_cycle_in_the_library():
    """No two vae_core modules import each other, directly or through others, at the top or
    inside a function (a cycle hides a layer that is not one)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "vae_core"
    graph = {}
    for path in root.rglob("*.py"):
        name = ".".join(("vae_core", *path.relative_to(root).with_suffix("").parts))
        graph[name.removesuffix(".__init__")] = _imported_modules(path)
    for name in graph:  # a package's modules stand for the package ("vae_core.tracking")
        graph[name] = {m for m in graph[name] if m != name}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(n for n in graph if n != "vae_core" and n in reach(n))
    assert not cycles, f"modules on an import cycle: {cycles}"
