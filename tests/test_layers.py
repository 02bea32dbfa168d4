"""The import rules of README "Project layout", checked on the source: a new import that
breaks a layer fails here."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(folder: str) -> list[Path]:
    return sorted((APP / folder).rglob("*.py"))


def _app_imports(path: Path) -> set[str]:
    return {name for name in _imports(path) if name == "app" or name.startswith("app.")}


def test_core_imports_nothing_above_it():
    for path in _modules("core"):
        bad = {n for n in _app_imports(path) if not n.startswith("app.core")}
        assert not bad, (path.name, bad)


def test_models_import_only_core():
    for path in _modules("models"):
        bad = {n for n in _app_imports(path) if not n.startswith(("app.core", "app.models"))}
        assert not bad, (path.name, bad)


def test_rag_knows_no_tenant_table_or_route():
    for path in _modules("rag"):
        bad = {n for n in _app_imports(path) if not n.startswith(("app.core", "app.rag"))}
        assert not bad, (str(path.relative_to(APP)), bad)
        assert not {n for n in _imports(path) if n.startswith(("fastapi", "starlette"))}, path


def test_services_know_no_http_and_no_runtime():
    services = [
        p
        for p in APP.rglob("*.py")
        if p.parent.name not in ("core", "ops", "widget")
        and p.name not in ("router.py", "dependencies.py", "main.py", "runtime.py", "public.py")
        and p.parent != APP / "rag"
        and p.parent.parent != APP / "rag"
    ]
    assert len(services) > 10
    for path in services:
        names = _imports(path)
        http = {n for n in names if n.startswith(("fastapi", "starlette"))}
        assert not http, (str(path.relative_to(APP)), http)
        assert "app.runtime" not in names or path.name == "__main__.py", path
        routers = {n for n in names if n.endswith(".router")}
        assert not routers, (str(path.relative_to(APP)), routers)
