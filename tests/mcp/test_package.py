"""The app's package shares the name `mcp` with the MCP Python SDK (see mcp/__init__.py): both
halves must import, and the app must not take a name the SDK uses."""

import importlib
from pathlib import Path

import mcp


def module_names(root: Path) -> set[str]:
    return {p.stem for p in root.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()} - {"__init__"}


def test_the_sdk_and_the_app_both_import():
    client = importlib.import_module("mcp.client.client")  # the SDK's subpackage
    models = importlib.import_module("mcp.models")  # the app's module
    assert mcp.Client is client.Client
    assert models.MCPConfiguration._meta.app_label == "mcp"


def test_the_app_takes_no_name_the_sdk_uses():
    app, sdk = (Path(p) for p in mcp.__path__)
    assert app.name == sdk.name == "mcp" and app != sdk
    assert not module_names(app) & module_names(sdk)
