"""The code's shape, as a specification: the package's import graph has no circle, no module is a hub
that imports most of the rest, and no module outgrows a reading. Imports under `if TYPE_CHECKING:`
name types for annotations and run nothing, so they are not dependencies here."""
import ast

from conftest import ROOT

PACKAGE = ROOT / "lab"
MODULES = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
MAX_LINES = 400


def imports_of(path) -> set[str]:
    """The package's own modules that `path` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    for block in [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]:
        block.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("lab."):
            found.add(node.module.split(".")[1])
    return found & MODULES.keys()


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_no_import_circle():
    def visit(name, trail):
        assert name not in trail, "import circle: " + " -> ".join(trail[trail.index(name):] + [name])
        for dep in sorted(GRAPH[name]):
            visit(dep, trail + [name])
    for name in sorted(GRAPH):
        visit(name, [])


def test_no_module_imports_more_than_a_third_of_the_others():
    limit = (len(MODULES) - 1) / 3
    hubs = {name: len(deps) for name, deps in GRAPH.items() if len(deps) > limit}
    assert not hubs, f"more than {limit:.0f} of the package's modules imported by: {hubs}"


def test_no_module_is_longer_than_a_reading():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long
