"""The front doors (CLI, HTTP service, Ray driver) sit on the application layer and must not import one
another (issue 25 item 1). The application layer: `smoothgen.base_models` (models, runtimes, record
builders, digests) and `smoothgen.text_generation`; the edges listed in REMAINING are what is left, and
this test fails on any edge added beside them (and, once one is removed, on its return)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "smoothgen"

FRONT_DOORS = {
    "cli": "CLI", "generate_cli": "CLI", "serve_cli": "CLI", "verify_cli": "CLI",
    "service": "HTTP", "serve": "HTTP", "serve_proxy": "HTTP",
    "distributed": "Ray",
}

#: Cross-door imports still there: the CLI hands a --ray run to the driver, and `smoothgen serve` (a CLI
#: command) starts the HTTP service. Runtimes, record builders and digests are in the application layer.
REMAINING = {("cli", "distributed"), ("serve_cli", "serve"), ("serve_cli", "service")}

#: Application-layer modules: they import no front door at all.
APPLICATION = ("text_generation", "base_models", "jobs", "generative", "classify", "center")


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
