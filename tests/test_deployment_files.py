"""docker/ cannot be run here (no Docker engine); its files are checked for what can be checked:
syntax, and that they name the roles, files and settings the platform really has."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def test_compose_runs_each_role_from_one_image_with_both_database_roles():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "web", "worker", "beat", "nginx"} <= set(services)
    for role in ("migrate", "web", "worker", "beat"):
        assert services[role]["command"] == [role]
    assert "DATABASE_OWNER_URL" in services["migrate"]["environment"]
    assert "agentapi_app" in services["web"]["environment"]["DATABASE_URL"]
    for name in re.findall(r"\./([\w.-]+)", (DOCKER / "compose.yaml").read_text()):
        assert (DOCKER / name).exists(), name


def test_the_start_script_parses_and_knows_every_role():
    subprocess.run(["sh", "-n", str(DOCKER / "start")], check=True)
    script = (DOCKER / "start").read_text()
    for role in ("web)", "worker)", "beat)", "migrate)"):
        assert role in script


def test_the_dockerfile_stages_and_files_exist():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", dockerfile, re.MULTILINE)
    for used in re.findall(r"--from=(\w+)", dockerfile):
        assert used in stages
    assert "USER agentapi" in dockerfile
    for copied in re.findall(r"^COPY (requirements/\S+)", dockerfile, re.MULTILINE):
        assert (DOCKER.parent / copied).exists()


def test_the_gunicorn_config_names_a_worker_class_we_install():
    config = {}
    exec(compile((DOCKER / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), config)
    module = config["worker_class"].rsplit(".", 1)[0]
    __import__(module)
    assert (DOCKER.parent / "requirements" / "production.txt").read_text().count("uvicorn-worker==") == 1


# -- Kubernetes (docker/kubernetes) ---------------------------------------------------------------

KUBERNETES = DOCKER / "kubernetes"
KUBERNETES_VERSION = "1.33.0"


def _documents(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def _merge(base, patch):
    """A strategic-merge patch as kustomize applies the ones here: maps merged, lists of named items
    (containers, volumes, env) merged by name, other lists replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in patch):
        merged = [dict(item) for item in base]
        for item in patch:
            index = next((i for i, old in enumerate(merged) if old.get("name") == item["name"]), None)
            if index is None:
                merged.append(item)
            else:
                merged[index] = _merge(merged[index], item)
        return merged
    return patch


def render(directory: Path) -> list[dict]:
    """What `kubectl kustomize directory` makes of these files (the subset of kustomize they use;
    there is no kustomize binary here)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    resources = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        resources += render(path) if path.is_dir() else _documents(path)
    for patch_entry in kustomization.get("patches", []):
        (patch,) = _documents(directory / patch_entry["path"])
        targets = [
            r for r in resources if (r["kind"], r["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
        ]
        assert len(targets) == 1, patch_entry
        resources[resources.index(targets[0])] = _merge(targets[0], patch)
    for entry in kustomization.get("replicas", []):
        (target,) = [r for r in resources if r["kind"] == "Deployment" and r["metadata"]["name"] == entry["name"]]
        target["spec"]["replicas"] = entry["count"]
    for entry in kustomization.get("labels", []):
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(entry["pairs"])
    for image in kustomization.get("images", []):
        for resource in resources:
            for container in resource.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name, _, _tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    if "namespace" in kustomization:
        for resource in resources:
            resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def _pods(resources) -> list[tuple[str, dict]]:
    return [
        (r["metadata"]["name"], r["spec"]["template"]["spec"]) for r in resources if r["kind"] in {"Deployment", "Job"}
    ]


def test_every_kubernetes_manifest_is_valid_against_the_kubernetes_schemas():
    from kubernetes_validate import utils

    for directory in (KUBERNETES / "base", KUBERNETES / "overlays" / "production"):
        resources = render(directory)
        assert resources
        for resource in resources:
            utils.validate(resource, KUBERNETES_VERSION, strict=True)
    # The patches and kustomizations name only files that are there.
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for entry in spec.get("resources", []) + [p["path"] for p in spec.get("patches", [])]:
            assert (kustomization.parent / entry).exists(), entry


def test_a_schema_violation_is_caught_by_the_validator():
    from kubernetes_validate import utils

    (web,) = [
        r for r in render(KUBERNETES / "base") if r["kind"] == "Deployment" and r["metadata"]["name"] == "agentapi-web"
    ]
    web["spec"]["replicas"] = "two"
    with pytest.raises(utils.ValidationError):
        utils.validate(web, KUBERNETES_VERSION, strict=True)


def test_the_kubernetes_deployment_runs_every_role_as_the_production_profile_needs():
    from django.conf import settings

    resources = render(KUBERNETES / "overlays" / "production")
    by_kind: dict[str, dict] = {}
    for resource in resources:
        by_kind.setdefault(resource["kind"], {})[resource["metadata"]["name"]] = resource
    deployments = by_kind["Deployment"]
    assert {"agentapi-web", "agentapi-worker", "agentapi-beat"} <= set(deployments)
    assert deployments["agentapi-beat"]["spec"]["replicas"] == 1  # never two schedulers
    assert deployments["agentapi-beat"]["spec"]["strategy"]["type"] == "Recreate"
    assert "agentapi-migrate" in by_kind["Job"]
    roles = {name: spec["containers"][0]["args"] for name, spec in _pods(resources)}
    assert roles == {"agentapi-web": ["web"], "agentapi-worker": ["worker"], "agentapi-beat": ["beat"],
                     "agentapi-migrate": ["migrate"]}  # fmt: skip
    script = (DOCKER / "start").read_text()
    assert all(f"{role[0]})" in script for role in roles.values())
    # Autoscaling and disruption budgets for web and worker, on CPU.
    for name in ("agentapi-web", "agentapi-worker"):
        hpa = by_kind["HorizontalPodAutoscaler"][name]
        assert hpa["spec"]["scaleTargetRef"]["name"] == name
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert (
            by_kind["PodDisruptionBudget"][name]["spec"]["selector"]["matchLabels"]
            == (deployments[name]["spec"]["selector"]["matchLabels"])
        )
    web = deployments["agentapi-web"]["spec"]["template"]
    container = web["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live/"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready/"
    assert web["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert web["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    service = by_kind["Service"]["agentapi-web"]
    assert service["spec"]["selector"] == deployments["agentapi-web"]["spec"]["selector"]["matchLabels"]
    # Non-root, read-only root filesystem, nothing to escalate, no API token; /tmp writable.
    for name, spec in _pods(resources):
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}, name
            assert container["image"] == "registry.example.com/agentapi:1.0.0"
            sources = {next(iter(source)): next(iter(source.values()))["name"] for source in container["envFrom"]}
            assert sources == {"configMapRef": "agentapi-config", "secretRef": "agentapi-secrets"}
    # Secrets come from the Secret only: the ConfigMap holds none of what production requires secret.
    config = by_kind["ConfigMap"]["agentapi-config"]["data"]
    assert not {"SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL"} & set(config)
    assert config["DJANGO_SETTINGS_MODULE"] == "agentapi.settings.production"
    # Every setting the ConfigMap gives is one the platform reads, and every setting the production
    # profile requires without a default is given by the ConfigMap or named for the Secret.
    required = set(
        re.findall(r'env\.\w+\("([A-Z_]+)"\)', (DOCKER.parent / "agentapi/settings/production.py").read_text())
    )
    documented = (KUBERNETES / "base" / "configmap.yaml").read_text()
    assert required <= set(config) | {name for name in required if name in documented}, required
    read = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', (DOCKER.parent / "agentapi/settings/base.py").read_text()))
    read |= set(re.findall(r'environ\.get\("([A-Z_]+)"', (DOCKER / "gunicorn.conf.py").read_text()))
    read |= set(re.findall(r"\$\{([A-Z_]+)", (DOCKER / "start").read_text())) | {"DJANGO_SETTINGS_MODULE"}
    assert set(config) <= read, set(config) - read
    assert hasattr(settings, "RATE_LIMIT_EXPECTED_PROCESSES")


def test_the_grafana_dashboard_reads_only_metrics_the_platform_exports(tmp_path, db):
    """Every metric a panel queries is one /metrics serves (the platform's, or django-prometheus's)."""
    import json
    import os
    import sys

    dashboard = json.loads((DOCKER / "grafana" / "agentapi-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b((?:agentapi|django)_[a-z_]+)", target["expr"]))
    # A process that served requests, used the cache and the database, and recorded the platform's
    # metrics with a sample each; then a scrape.
    script = (
        "from django.core.cache import cache; from django.test import Client\n"
        "from mcp import metrics as m; from sessions_app import runs; from agentapi import ratelimit\n"
        "Client().get('/health/live/'); cache.set('metrics-x', 1, 5); cache.get('metrics-x')\n"
        "from django.db import connection\n"
        "with connection.cursor() as c: c.execute('SELECT 1')\n"
        "m.calls.labels('1', 'tools/call', 'ok').inc(); m.latency.labels('1', 'tools/call', 'ok').observe(0.1)\n"
        "m.pool_size.set(1); m.breaker_state.labels('1').set(0)\n"
        "runs.runs_total.labels('completed', 'openai').inc(); runs.first_event_seconds.observe(0.2)\n"
        "runs.tokens_total.labels('input', 'openai').inc()\n"
        "ratelimit.REFUSED.labels('read', 'credential').inc()\n"
        "print(Client().get('/metrics').content.decode())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    scrape = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], env=env, check=True,
                            capture_output=True, text=True, cwd=DOCKER.parent).stdout  # fmt: skip
    exported = set(re.findall(r"^# TYPE (\S+)", scrape, re.MULTILINE))
    served = {name for base in exported for name in (base, f"{base}_total", f"{base}_bucket")}
    assert queried <= served, queried - served
