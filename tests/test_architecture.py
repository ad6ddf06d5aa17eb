"""One door: every channel goes through azaguard.service and gets view models back.

`lint-imports` (pyproject.toml, run by the README's test command) holds the import contracts:
the API and the pages import no store module, the clinical core imports no store, service, web
framework or database, and the app, routers, dependencies and service form no cycle. These tests
hold what an import contract cannot see.
"""

from __future__ import annotations

import ast
import inspect
import re
import typing
from pathlib import Path
from typing import Any

from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from azaguard import service
from azaguard.app import create_app
from azaguard.store import models as m
from azaguard.store.db import Database

PACKAGE = Path(__file__).resolve().parent.parent / "azaguard"
CHANNELS = [PACKAGE / "api" / "rest.py", *sorted((PACKAGE / "web").glob("*.py"))]


def calls_in(path: Path) -> set[str]:
    """Names of the functions a module calls (`select`, `audit`, `writes.add_lab` -> `add_lab`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    return names


def test_the_channels_neither_query_nor_write_nor_audit_themselves() -> None:
    for path in CHANNELS:
        text = path.read_text(encoding="utf-8")
        assert not calls_in(path) & {"select", "audit", "scalars", "execute"}, path.name
        assert not re.search(r"\bwrites\.|\bs\.get\(|begin_nested", text), path.name


def orm_classes_in(annotation: Any) -> set[type]:
    found = set()
    if isinstance(annotation, type) and issubclass(annotation, m.Base):
        found.add(annotation)
    for arg in typing.get_args(annotation):
        found |= orm_classes_in(arg)
    return found


def test_use_cases_return_view_models_never_database_rows() -> None:
    public = [
        (name, fn)
        for name, fn in vars(service).items()
        if inspect.isfunction(fn) and fn.__module__ == service.__name__ and not name.startswith("_")
    ]
    assert len(public) >= 30
    for name, fn in public:
        hints = typing.get_type_hints(fn)
        assert "return" in hints, f"service.{name} has no return type"
        assert not orm_classes_in(hints["return"]), f"service.{name} returns a database row"


def test_every_json_route_has_a_typed_response_model() -> None:
    app = create_app(Database("sqlite://", create=False))
    routes = [
        r.route
        for r in iter_route_contexts(app.routes)
        if isinstance(r.route, APIRoute) and r.route.path.startswith("/api/")
    ]
    assert len(routes) >= 20
    for route in routes:
        if route.status_code == 204:
            continue  # no body (e.g. DELETE /api/v1/token): nothing to type
        if "application/json" not in route.responses.get(200, {}).get("content", {"application/json": {}}):
            continue  # bytes, not JSON (a document's PDF): the OpenAPI answer names its media type
        model = route.response_model
        assert isinstance(model, type) and issubclass(model, BaseModel), f"{route.path} has no response model"
    for path, operations in app.openapi()["paths"].items():
        for method, op in operations.items():
            for status, answer in op["responses"].items():
                for media, body in answer.get("content", {}).items():
                    schema = body.get("schema") or {}
                    assert "$ref" in schema or schema.get("type") not in (None, "object"), (method, path, status, media)
