"""The layout rules of docs/architecture.md: the library never imports the applications.

Library: gaussianvision.{splats, raster, fit, data, models, train, eval} and the top-level
modules. Applications: gaussianvision.apps.* (cli, bench, demo with its world, report). An app
may import the library and other apps; a library module may not import an app, at module level
or inside a function, absolutely or relatively, nor name one in a string given to importlib.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "gaussianvision"
APPS = "gaussianvision.apps"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(text: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a module of `package`, relative ones resolved."""
    tree = ast.parse(text)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return out


def library_files() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if (PKG / "apps") not in p.parents)


def violations(text: str, package: str, where: str) -> list[str]:
    bad = [f"{where}:{line} imports {name}" for line, name in _imports(text, package)
           if name == APPS or name.startswith(APPS + ".")]
    bad += [f"{where} names {m.group(0)} in a string" for m in re.finditer(r"[\"']gaussianvision\.apps[\w.]*[\"']", text)]
    return bad


def _package(path: Path) -> str:
    mod = _module(path)
    return mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]


def test_the_library_never_imports_the_applications():
    files = library_files()
    assert len(files) > 40, "the library's modules were not found"
    bad = [v for f in files for v in violations(f.read_text(), _package(f), str(f.relative_to(SRC)))]
    assert bad == []


@pytest.mark.parametrize("form", [
    "from gaussianvision.apps.cli import main", "import gaussianvision.apps.bench.fit",
    "from ..apps.demo import world", "from .. import apps",
    "def f():\n    from ..apps.demo.world import mirror", "X = 'gaussianvision.apps.cli.main'"])
def test_the_rule_catches_every_form_of_import(form):
    """A module of gaussianvision.train that imports an app, in any form, is reported."""
    assert violations(form + "\n", "gaussianvision.train", "probe")


def test_the_rule_lets_the_library_import_itself():
    text = "from ..fit import fit_images\nfrom . import losses\nimport gaussianvision.splats\n"
    assert violations(text, "gaussianvision.train", "probe") == []


@pytest.mark.parametrize("package", ["splats", "raster", "fit", "data", "models", "train", "eval"])
def test_each_library_package_exists(package):
    assert (PKG / package / "__init__.py").is_file()


def _module_level_imports(path: Path) -> set[str]:
    """Library modules imported at the top level of a file (not inside functions)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            text = ast.get_source_segment(path.read_text(), node) or ""
            for _, name in _imports(text, _package(path)):
                out.add(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_file_level_import_circle_in_the_library():
    """e.g. splats/format.py <-> splats/quantized.py (issue 19): modules import each other only one way."""
    mods = {_module(f): f for f in library_files()}

    def resolve(name):  # "pkg.mod.symbol" -> the longest module prefix that is a library module
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in mods:
                return ".".join(parts[:k])
        return None

    graph = {m: {r for n in _module_level_imports(f) if (r := resolve(n)) and r != m
                 and not (mods[m].name == "__init__.py" and r.startswith(m + "."))}
             for m, f in mods.items()}
    # a package's __init__ importing its own submodules is not a circle; a submodule importing its
    # package's __init__ only for a sibling is resolved to the package: drop package nodes' own edges
    graph = {m: {r for r in deps if not (mods[r].name == "__init__.py" and m.startswith(r + "."))}
             for m, deps in graph.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_no_code_writes_another_package_s_private_state():
    """The demo once wrote open_clip's private _MODEL_CONFIGS and replaced clip_benchmark's tqdm;
    models are registered through open_clip.add_model_config, quiet bars by redirecting stderr."""
    pattern = re.compile(r"_MODEL_CONFIGS|^\s*(zc|zeroshot_classification|open_clip\.\w+)\.\w+\s*=", re.M)
    hits = [f"{f.relative_to(SRC)}: {m.group(0).strip()}" for f in sorted(PKG.rglob("*.py"))
            for m in pattern.finditer(f.read_text())]
    assert hits == []


# ------------------------------------------------------------------ one atomic write
# Where a rename by hand may stay (path under src/gaussianvision -> how many, why). Everything else
# writes files through atomic.write_atomic (docs/architecture.md, "the atomic write").
RENAMES_ALLOWED = {
    "atomic.py": (1, "the one atomic write itself"),
    "data/shards.py": (1, "ShardWriter streams a tar into its temporary file and renames it on close"),
    "apps/demo/world/world.py": (1, "the new world's directories are moved in whole"),
    "train/checkpoint.py": (2, "step directories: a finished one moved in, newer bad ones moved aside"),
}
_RENAMERS = {("os", "replace"), ("os", "rename"), ("os", "renames"), ("shutil", "move")}


def renames(text: str) -> list[int]:
    """Lines that rename a file by hand: os.replace / os.rename / shutil.move (also imported by
    name), and Path.replace(target) / Path.rename(target) (one argument: str.replace takes two)."""
    tree = ast.parse(text)
    by_name = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               for a in n.names if (n.module, a.name) in _RENAMERS}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in by_name:
            lines.append(node.lineno)
        elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in _RENAMERS:
            lines.append(node.lineno)
        elif (isinstance(f, ast.Attribute) and f.attr in ("replace", "rename")
              and len(node.args) == 1 and not node.keywords):
            lines.append(node.lineno)
    return sorted(lines)


def test_files_are_renamed_by_hand_only_in_the_documented_places():
    """`grep -rn "os.replace\\|.replace(tmp" src` lists only atomic.py and the documented exceptions
    (each with a comment saying why); every other library or app module writes through write_atomic."""
    found = {}
    for f in sorted(PKG.rglob("*.py")):
        lines = renames(f.read_text())
        if lines:
            found[f.relative_to(PKG).as_posix()] = lines
    bad = [f"{rel}:{lines} renames by hand (use gaussianvision.atomic.write_atomic)"
           for rel, lines in found.items() if len(lines) > RENAMES_ALLOWED.get(rel, (0, ""))[0]]
    assert bad == []
    assert set(found) == set(RENAMES_ALLOWED), "an allowed exception is gone: drop it from RENAMES_ALLOWED"


@pytest.mark.parametrize("form", [
    "os.replace(tmp, path)", "os.rename(a, b)", "shutil.move(a, b)", "tmp.replace(path)",
    "Path(t).rename(p)", "from os import replace\nreplace(a, b)", "from os import rename as mv\nmv(a, b)",
    "def f():\n    self.tmp.replace(self.path)"])
def test_the_rename_rule_catches_every_form(form):
    assert renames(form + "\n")


def test_the_rename_rule_ignores_other_replaces():
    text = ("s = 'a/b'.replace('/', '_')\nfrom dataclasses import replace\ncfg = replace(cfg, x=1)\n"
            "opt.replace(params, state, keep)\nd = d.replace(year=2000)\nname.rename(columns={})\n")
    assert renames(text) == []
