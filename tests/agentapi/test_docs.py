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
