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
