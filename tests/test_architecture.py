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
    r"isinstance\([^)]*\b(ImagePreprocessor|TabularPreprocessor|ImageData|LabelledTable"
    r"|TableKind|ImageKind)\b"
    r"|\bkind\s*[!=]=\s*[\"'](images|table)[\"']"
    r"|[\"'](images|table)[\"']\s*[!=]=\s*\S*kind\b"
)
# Where such a test may stand, and why.
_KIND_DECIDED = {
    "vae_core/kinds/choice.py": "the one place: kind_of_model (a fitted detector's kind)",
    "flows/demo.py": "the demo's output folder (runs/demo or runs/demo-images) and its lines",
}


def test_the_kind_of_data_is_decided_in_one_place():
    """Issue "One path for tables and images": the code asks a ``protocol.DataKind`` what to
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


# ---- the kinds of data: classes behind one typed protocol --------------------------------------
KINDS_PACKAGE = PACKAGE / "kinds"
# The kinds' classes and their datasets: named only inside vae_core/kinds.
KIND_CLASSES = ("TableKind", "ImageKind", "LabelledTable", "ImageData")


def _protocol_members(protocol) -> set[str]:
    return {
        name
        for name in vars(protocol)
        if not name.startswith("_") or name == "__len__"
        if name not in {"_is_protocol", "_is_runtime_protocol"}
    } | set(getattr(protocol, "__annotations__", {}))


def test_every_kind_implements_the_protocol_with_its_signatures():
    """Each kind of ``kinds.choice.KINDS`` is a ``protocol.DataKind``: every method the
    protocol names, with the same parameters (names, kinds, keyword-only ones); every dataset
    class a ``protocol.Dataset``."""
    import inspect

    from vae_core.kinds import choice, protocol
    from vae_core.kinds.image_sets import ImageData
    from vae_core.kinds.table import LabelledTable

    members = {m for m in _protocol_members(protocol.DataKind) if not m.startswith("__")}
    assert {
        "read",
        "chunks",
        "score_frame",
        "record",
        "review",
        "examples",
        "latent_frame",
    } <= members
    assert set(choice.KINDS) == {"table", "images"}
    for name, kind in choice.KINDS.items():
        assert isinstance(kind, protocol.DataKind), name
        assert kind.name == name
        for member in members:
            wanted = getattr(protocol.DataKind, member, None)
            if not callable(wanted):  # an attribute: isinstance checked it is there
                continue
            got = getattr(type(kind), member)
            want_params = list(inspect.signature(wanted).parameters.values())
            got_params = list(inspect.signature(got).parameters.values())
            assert [(p.name, p.kind) for p in got_params] == [
                (p.name, p.kind) for p in want_params
            ], f"{type(kind).__name__}.{member}"
    dataset_members = _protocol_members(protocol.Dataset) - {"__len__"}
    for cls in (LabelledTable, ImageData):
        fields = set(getattr(cls, "__dataclass_fields__", {}))
        missing = {m for m in dataset_members if not hasattr(cls, m) and m not in fields}
        assert not missing, f"{cls.__name__} lacks {missing}"


def test_no_module_outside_the_kinds_names_a_kinds_class():
    """The steps, the tracking layer, the command line and the flows get a kind from
    ``kinds.choice`` and call it: none of them names ``TableKind``, ``ImageKind`` or their
    datasets' classes (``LabelledTable``, ``ImageData``)."""
    pattern = re.compile(r"\b(" + "|".join(KIND_CLASSES) + r")\b")
    outside = [
        p
        for p in [*PACKAGE.rglob("*.py"), *(ROOT / "flows").glob("*.py")]
        if KINDS_PACKAGE not in p.parents
    ]
    named = {
        str(p.relative_to(ROOT)): n
        for p in outside
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    }
    assert not named, named


def test_no_private_name_crosses_a_module():
    """What one module takes from another has a public name: no ``from x import _name``
    in the library or the flows (a private name is the module's own business)."""
    private = [
        f"{path.relative_to(ROOT)}: {node.module}.{alias.name}"
        for path in [*PACKAGE.rglob("*.py"), *(ROOT / "flows").glob("*.py")]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__"
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not private, private


def test_no_test_module_imports_another_test_module():
    """What several test modules share lives in tests/helpers.py (and conftest.py): a test
    module imports no other ``tests.test_*`` module."""
    crossing = [
        f"{path.name}: {node.module}"
        for path in (ROOT / "tests").glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        and node.module
        and node.module.startswith("tests.test_")
    ]
    assert not crossing, crossing


def test_no_module_is_longer_than_450_lines():
    """A module past about 450 lines holds two concerns: split it along them."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in [*PACKAGE.rglob("*.py"), *(ROOT / "flows").glob("*.py")]
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert not long, long
