"""The OpenAPI schema and its docs are served without internet: every asset is local."""

import re

from django.test import Client


def test_the_schema_describes_the_api_and_its_bearer_authentication(db):
    schema = Client().get("/api/schema/", headers={"Accept": "application/json"}).json()
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/api-keys/" in schema["paths"] and "/api/v1/audit/events/export/" in schema["paths"]
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_the_docs_page_loads_only_local_assets(db):
    client = Client()
    page = client.get("/api/docs/").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets, page[:500]
    assert not [url for url in assets if re.match(r"(https?:)?//", url)], assets
    for url in assets:
        if url.startswith("/static/"):
            assert client.get(url).status_code == 200, url


def test_every_environment_variable_the_settings_read_is_in_the_readme():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    settings_source = "".join(p.read_text() for p in (root / "agentapi" / "settings").glob("*.py"))
    names = set(re.findall(r"""env(?:\.\w+)?\(\s*["']([A-Z][A-Z0-9_]+)["']""", settings_source))
    readme = (root / "README.md").read_text()
    assert names, "no environment variables found: the pattern no longer matches the settings"
    assert sorted(name for name in names if f"`{name}`" not in readme) == []
