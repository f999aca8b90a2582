"""The front doors (CLI, HTTP service, Ray driver) sit on the application layer and must not import one
another (issue 25 item 1). The application layer: `smoothgen.job_specs` (typed jobs), `smoothgen.registry`
(named models), `smoothgen.base_models` (models, runtimes, record builders, digests) and
`smoothgen.text_generation`; the edges listed in REMAINING are the two launches, and this test fails on any
edge added beside them (and, once one is removed, on its return)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "smoothgen"

FRONT_DOORS = {
    "cli": "CLI", "cli_help": "CLI", "generate_cli": "CLI", "serve_cli": "CLI", "verify_cli": "CLI",
    "service": "HTTP", "serve": "HTTP", "serve_proxy": "HTTP",
    "distributed": "Ray",
}

#: The two launches between front doors, one-way: the CLI hands a --ray run (its typed job and RayOptions) to
#: the driver, and `smoothgen serve` (a CLI command) starts the HTTP service (`smoothgen.serve.start`, after
#: `precheck`). Runtimes, record builders, digests and job specifications are in the application layer.
REMAINING = {("cli", "distributed"), ("serve_cli", "serve")}

#: Application-layer modules: they import no front door at all.
APPLICATION = ("text_generation", "base_models", "jobs", "job_specs", "registry", "api", "generative", "classify",
               "center")


def _imports(module: str) -> set[str]:
    """The smoothgen modules a module imports anywhere in it (functions' own imports included)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "smoothgen":
                out.update(alias.name for alias in node.names)
            elif node.module.startswith("smoothgen."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("smoothgen."))
    return out


def test_front_doors_import_no_other_front_door_beyond_the_known_edges():
    edges = {(m, t) for m, door in FRONT_DOORS.items() for t in _imports(m) if t in FRONT_DOORS and FRONT_DOORS[t] != door}
    assert edges <= REMAINING, f"new imports between front doors: {sorted(edges - REMAINING)}"
    # Generation has its application layer: no front door reaches another for it.
    assert not {m for m in ("service", "verify_cli", "jobs") if "generate_cli" in _imports(m)}
    assert not {m for m in ("service", "distributed") if "cli" in _imports(m)}
    stale = REMAINING - edges
    assert not stale, f"these edges are gone: remove them from REMAINING so that they cannot come back: {sorted(stale)}"


def test_the_application_layer_imports_no_front_door():
    for module in APPLICATION:
        assert not _imports(module) & set(FRONT_DOORS), module


def _graph() -> dict[str, set[str]]:
    """Every module of the package (sub-packages as dotted names) and the package modules it imports."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if base == "smoothgen" or base.startswith("smoothgen."):
                    for alias in node.names:
                        out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("smoothgen"))
        graph[name] = {m for m in out if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_involves_a_front_door():
    """Issue 25's target: the front doors (and the console script's entry) are in no import cycle; the
    cycles left are inside the library (modules that import each other's names lazily)."""
    doors = {f"smoothgen.{m}" for m in FRONT_DOORS} | {"smoothgen._entry"}
    graph = _graph()
    assert {"smoothgen.cli", "smoothgen.service", "smoothgen.serve"} <= set(graph)
    involved = [sorted(c & doors) for c in _cycles(graph) if c & doors]
    assert not involved, f"import cycles through front doors: {involved}"
    # The check sees a cycle when there is one.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_argparse_lives_only_in_the_command_lines():
    """Only the CLI's modules (and the training scripts, command lines of their own) build parsers: the
    service, the Ray driver and the application layer take typed specifications."""
    allowed = {f"smoothgen.{m}" for m, door in FRONT_DOORS.items() if door == "CLI"} | {
        "smoothgen.models.train", "smoothgen.models.train_code_bpe"}
    users = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names)
               or isinstance(n, ast.ImportFrom) and n.module == "argparse" for n in ast.walk(tree)):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            users.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert users <= allowed, f"argparse outside the command lines: {sorted(users - allowed)}"
