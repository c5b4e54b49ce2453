"""docker/ cannot be run here (no Docker engine); its files are checked for what can be checked:
syntax, and that they name the roles, files and settings the platform really has."""

import re
import subprocess
from pathlib import Path

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
