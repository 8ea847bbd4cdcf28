"""The layers of docs/architecture.md, checked: every vae_core module is placed in one layer,
and imports only from its own layer or the ones below (at the top of a file or inside a
function). vae_core never imports the flows."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vae_core"


def layers() -> list[set[str]]:
    """The layers, top first, from the ```layers block of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.DOTALL).group(1)
    return [{m.strip() for m in line.split(":", 1)[1].split(",")} for line in block.splitlines()]


def modules() -> dict[str, Path]:
    """Every vae_core module by its name below the package (``registry``, ``a.b``)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path
    return found


def imported(path: Path, known: set[str]) -> set[str]:
    """The vae_core modules a file imports (``from vae_core import x`` counts as x)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "vae_core":
                names |= {a.name for a in node.names if a.name in known}
            elif node.module.startswith("vae_core."):
                names.add(node.module.removeprefix("vae_core."))
        elif isinstance(node, ast.Import):
            names |= {
                a.name.removeprefix("vae_core.")
                for a in node.names
                if a.name.startswith("vae_core.")
            }
    return names


def ranks() -> dict[str, int]:
    """Each module's layer, 0 the top; a package named in a layer places its modules there."""
    listed = {m: i for i, layer in enumerate(layers()) for m in layer}
    placed = {}
    for name in modules():
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in listed:
                placed[name] = listed[".".join(parts[:k])]
                break
    return placed


def test_every_module_is_in_one_layer():
    listed = [m for layer in layers() for m in layer]
    assert len(listed) == len(set(listed)), "a module is in two layers"
    missing = set(modules()) - set(ranks())
    assert not missing, f"place these in a layer of docs/architecture.md: {sorted(missing)}"
    assert not set(listed) - set(modules()), "docs/architecture.md names modules that are gone"


def test_imports_go_down_the_layers():
    rank = ranks()  # 0 = the top
    known = set(modules())
    upward = [
        f"{name} ({rank[name]}) imports {other} ({rank[other]})"
        for name, path in modules().items()
        if name in rank
        for other in sorted(imported(path, known))
        if other in rank and rank[other] < rank[name]
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_library_never_imports_the_flows():
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("flows"), name
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("flows") for a in node.names), name


# A test of the kind of data: isinstance against the table or image classes, or a comparison
# of ``data.kind`` / ``.kind`` with "table" or "images".
_KIND_TEST = re.compile(
    r"isinstance\([^)]*\b(ImagePreprocessor|TabularPreprocessor|ImageData|LabelledTable)\b"
    r"|\bkind\s*[!=]=\s*[\"'](images|table)[\"']"
    r"|[\"'](images|table)[\"']\s*[!=]=\s*\S*kind\b"
)
# Where such a test may stand, and why.
_KIND_DECIDED = {
    "vae_core/steps/dataset.py": "the one place: kind_of_model (a fitted detector's kind)",
    "flows/demo.py": "the demo's output folder (runs/demo or runs/demo-images) and its lines",
}


def test_the_kind_of_data_is_decided_in_one_place():
    """Issue "One path for tables and images": the code asks a ``dataset.DataKind`` what to
    do; it does not test which kind it has (``load_dataset`` and ``kind_named`` look the
    config's kind up in a table, no comparison)."""
    found = {}
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "flows").glob("*.py")]:
        rel = str(path.relative_to(ROOT))
        hits = [
            n for n, line in enumerate(path.read_text().splitlines(), 1) if _KIND_TEST.search(line)
        ]
        if hits:
            found[rel] = hits
    assert set(found) <= set(_KIND_DECIDED), {
        k: v for k, v in found.items() if k not in _KIND_DECIDED
    }
    assert all(len(lines) == 1 for lines in found.values()), found
