"""The documentation: the README is a short front door whose results table is the recorded
benchmark runs (tests/test_benchmarks.py checks the figures), and the site builds with
``mkdocs build --strict`` (a broken link, a missing page or a docstring that names a parameter
the signature lacks fails it), with a configuration reference that has every key of the
typed config, generated at build time from it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

README_MAX_LINES = 160


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once with --strict into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).parent / "mkdocs"
    assert mkdocs.exists(), "mkdocs is in the dev extra: pip install -e '.[dev]'"
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_the_readme_is_a_short_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    for command in ("make demo", "make test", "make docs"):
        assert command in readme
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link


def test_the_site_builds_strictly_with_every_page(site):
    for page in ("index.html", "configuration/index.html", "api/index.html", "tables/index.html"):
        assert (site / page).is_file(), page
    front = _text((site / "index.html").read_text())
    readme = (ROOT / "README.md").read_text()
    first = readme.splitlines()[2]  # the README is the front page, put there at build time
    assert " ".join(first.split()[:6]) in front
    assert "mean ROC-AUC" in front  # its results table too


def test_the_configuration_reference_has_every_key_of_the_typed_config(site):
    from vae_core.foundations.config_reference import sections

    html = (site / "configuration" / "index.html").read_text()
    for section, model in sections().items():
        table = html.split(f'id="{section}"', 1)[1].split("<h3", 1)[0]
        for key in model.model_fields:
            assert f"<code>{key}</code>" in table, f"{section}.{key}"
    assert "did you mean latent_dim" in _text(html)  # the hand-written part is there too


def test_the_api_reference_comes_from_the_docstrings(site):
    html = (site / "api" / "index.html").read_text()
    for method in ("fit", "calibrate", "anomaly_score", "log_likelihood", "transform", "save"):
        assert f'id="vae_core.estimator.detector.VAEDetector.{method}"' in html, method
    page = _text(html)
    assert "load_config" in page and "score_batch" in page


def test_the_config_reference_reads_the_meaning_of_keys_from_the_commented_file():
    from vae_core.foundations.config_reference import reference_markdown, yaml_comments

    comments = yaml_comments(
        "tracking:\n  uri: x   # where runs go\n                #   and models\n"
        "# a note at the margin\ncalibration:\n  policy:   # one of: a, b\n"
        "    name: a    #   or c\n"
    )
    assert comments == {"tracking.uri": "where runs go and models", "calibration.policy":
                        "one of: a, b or c"}  # fmt: skip
    text = reference_markdown(ROOT / "mlflow.yml")
    assert "| `latent_dim` | int, ≥ 1, ≤ 65536 | `8` |" in text
    assert "| `target_fpr` |" in text  # the calibration policies, by name


def test_links_to_files_the_site_does_not_carry_become_their_paths():
    """The README's links work on the site (docs/x.md -> x.md); a link to a repository file
    outside docs/ shows its path; a broken link is left for --strict to fail on."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_hook", ROOT / "docs/hooks/readme.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    assert hook.site_links("[a](docs/images.md#x) ![m](docs/latent_mnist_map.png)") == (
        "[a](images.md#x) ![m](latent_mnist_map.png)"
    )
    assert hook.site_links("see [data/README.md](data/README.md)") == "see `data/README.md`"
    page = "[c](../mlflow.yml) [t](tables.md) [x](gone.md) [w](https://example.org)"
    assert hook.site_links(page, hook.DOCS) == (
        "`mlflow.yml` [t](tables.md) [x](gone.md) [w](https://example.org)"
    )
