"""The package layers of docs/architecture.md, read from the source: no module imports from a higher layer, no
import cycle, and no project import hidden inside a function (the usual way to dodge the first two)."""
import ast
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("data", "geometry", "ddpm", "controlnet", "classify", "evaluation", "run")  # bottom -> top
# Command-line entry points sit above every layer: they may import anything, nothing imports them.
ENTRY_POINTS = ("train", "sample", "evaluation.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_sources() -> dict[str, str]:
    files = [p for package in LAYERS for p in (ROOT / package).rglob("*.py")]
    files += [ROOT / f"{name}.py" for name in ENTRY_POINTS if "." not in name]
    return {module_name(p): p.read_text() for p in files}


def imports(source: str, modules: set[str]) -> tuple[set[str], set[str]]:
    """(imported at module level, imported inside a function or class) project modules of one source."""
    top, local = set(), set()

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # `from pkg import sub` imports the module pkg.sub when there is one
                names = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in modules else child.module
                         for a in child.names]
            for name in names:
                if name.split(".")[0] in LAYERS:
                    (local if nested else top).add(name)
            visit(child, nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                      ast.Lambda)))

    visit(ast.parse(source), False)
    return top, local


def layer(module: str) -> int:
    return len(LAYERS) if module in ENTRY_POINTS else LAYERS.index(module.split(".")[0])


def violations(sources: dict[str, str]) -> list[str]:
    """Every upward import, function-local project import and import cycle among `sources` ({module: code})."""
    found, graph = [], {}
    for module, source in sorted(sources.items()):
        top, local = imports(source, set(sources))
        found += [f"{module}: imports {name} inside a function" for name in sorted(local)]
        found += [f"{module} (layer {module.split('.')[0]}) imports {name} from a higher layer"
                  for name in sorted(top) if layer(name) > layer(module)]
        graph[module] = {name for name in top if name in sources and name != module}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for name in sorted(graph[module]):
            if state.get(name) == 1:
                found.append("import cycle: " + " -> ".join(path[path.index(name):] + [module, name]))
            elif name not in state:
                walk(name, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [])
    return found


def test_no_upward_import_no_cycle_no_function_local_import():
    assert violations(project_sources()) == []


def test_every_installed_package_has_a_layer():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    packages = {p.strip() for p in setup["options"]["packages"].split(",")}
    assert packages == set(LAYERS)
    assert {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"bench", "tests"} == set(LAYERS)


def test_the_checker_catches_each_kind_of_violation():
    sources = {
        "data": "", "data.a": "from ddpm.b import f\n",  # upward
        "ddpm": "", "ddpm.b": "import ddpm.c\n", "ddpm.c": "from ddpm import b\n",  # cycle through `from pkg import`
        "geometry": "", "geometry.d": "def f():\n    from ddpm.b import f\n",  # hidden in a function
        "run": "", "run.e": "from data.a import x\nimport numpy\n",  # downward and third-party: fine
        "train": "from run.e import x\n",
    }
    found = violations(sources)
    assert "data.a (layer data) imports ddpm.b from a higher layer" in found
    assert "import cycle: ddpm.b -> ddpm.c -> ddpm.b" in found
    assert "geometry.d: imports ddpm.b inside a function" in found
    assert len(found) == 3
