"""The library knows nothing of Prefect: importing vae_core must not import it."""

import subprocess
import sys


def test_vae_core_does_not_import_prefect_or_mlflow():
    code = (
        "import sys, vae_core, vae_core.pipeline, vae_core.image_pipeline, vae_core.cli,"
        " vae_core.config;"
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
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("vae_core")}


def test_persistence_does_not_import_the_detector():
    """Saving and loading is the file format; the detector uses it (VAEDetector.load passes
    its class), never the other way round: no import cycle, hidden in a function or not."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "vae_core"
    assert "vae_core.detector" not in _imported_modules(root / "persist.py")
    assert "vae_core.persist" in _imported_modules(root / "detector.py")
