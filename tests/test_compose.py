"""docker-compose.yml describes the layout scripts/cluster starts (no Docker engine runs here, so
the file is checked by reading it): the same services, commands and settings, wired to each
other, and built from the Dockerfile's image."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.conftest import ROOT

INFRASTRUCTURE = {"postgres", "redis"}
APP_SERVICES = ("api1", "api2", "worker1", "worker2")
# Settings whose values are addresses or secrets: they differ between one machine and
# containers by design; their wiring is checked separately.
WIRING = {
    "DATABASE_URL",
    "UPLOAD_DIR",
    "CHROMA_URL",
    "RATE_LIMIT_STORAGE_URL",
    "PUBLIC_BASE_URL",
    "SECRET_KEY",
    "WORKER_METRICS_PORT",
    "WORKER_METRICS_HOST",
}
PLACEHOLDERS = {"--host": "<host>", "--port": "<port>", "--path": "<path>"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CLUSTER_") and key not in {"PUBLIC_BASE_URL", "SECRET_KEY"}
    }
    env["EMBEDDING_MODEL"] = "minilm"
    result = subprocess.run(
        [str(ROOT / "scripts" / "cluster"), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def resolve(value: Any) -> str:
    """A compose value with `${VAR:-default}` as its default and `${VAR:?error}` as
    <required>."""
    text = str(value)
    text = re.sub(r"\$\{\w+:\?[^}]*\}", "<required>", text)
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def normalized(command: list[str]) -> list[str]:
    """The program's name and its arguments, with addresses and folders as placeholders."""
    words = [Path(command[0]).name, *command[1:]]
    return [PLACEHOLDERS.get(words[i - 1], word) if i > 0 else word for i, word in enumerate(words)]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {key: resolve(value) for key, value in (service.get("environment") or {}).items()}


def test_compose_runs_the_processes_of_scripts_cluster(compose, plan) -> None:
    services = compose["services"]
    assert set(services) == set(plan) | INFRASTRUCTURE
    for name, process in plan.items():
        service = services[name]
        assert normalized(service["command"]) == normalized(process["command"]), name
        ours = environment(service)
        assert set(ours) == set(process["environment"]), name
        for key, value in process["environment"].items():
            if key not in WIRING:
                assert ours[key] == value, (name, key)
    assert {environment(services[n]).get("INGEST_WORKERS") for n in ("api1", "api2")} == {"0"}
    assert plan["migrate"]["once"] and services["migrate"]["restart"] == "no"


def test_every_app_process_shares_the_same_stores(compose, plan) -> None:
    services = compose["services"]
    chroma_port = option(services["chroma"]["command"], "--port")
    postgres = services["postgres"]["environment"]
    sharing = ["migrate", *APP_SERVICES]
    layouts = {
        "compose": [environment(services[name]) for name in sharing],
        "scripts/cluster": [plan[name]["environment"] for name in sharing],
    }
    for layout, envs in layouts.items():
        for key in ("DATABASE_URL", "UPLOAD_DIR", "CHROMA_URL", "RATE_LIMIT_STORAGE_URL"):
            assert len({env[key] for env in envs}) == 1, (layout, key)
        assert len({env["SECRET_KEY"] for env in envs}) == 1, layout
    app = environment(services["api1"])
    database = make_url(app["DATABASE_URL"])
    assert database.host == "postgres" and database.database == resolve(postgres["POSTGRES_DB"])
    assert database.username == resolve(postgres["POSTGRES_USER"])
    assert database.drivername == make_url(plan["api1"]["environment"]["DATABASE_URL"]).drivername
    assert app["CHROMA_URL"] == f"http://chroma:{chroma_port}"
    assert plan["api1"]["environment"]["CHROMA_URL"].endswith(
        ":" + option(plan["chroma"]["command"], "--port")
    )
    assert app["RATE_LIMIT_STORAGE_URL"].startswith("redis://redis:6379/")
    assert app["SECRET_KEY"] == "<required>"  # never a default key
    # One shared volume holds the uploads, mounted where UPLOAD_DIR says, in every process
    # that reads or writes them.
    for name in APP_SERVICES:
        assert f"uploads:{app['UPLOAD_DIR']}" in services[name]["volumes"], name
    assert (
        f"chroma:{option(services['chroma']['command'], '--path')}"
        in (services["chroma"]["volumes"])
    )


def test_apis_publish_their_ports_and_start_after_the_migration(compose) -> None:
    services = compose["services"]
    published = set()
    for name in ("api1", "api2"):
        service = services[name]
        host, container = service["ports"][0].split(":")
        assert container == option(service["command"], "--port")
        published.add(host)
    assert len(published) == 2
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["chroma"]["condition"] == depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "chroma", "api1", "api2"):
        assert services[name]["healthcheck"]["test"], name


def test_app_services_use_the_project_image(compose) -> None:
    services = compose["services"]
    for name in ("chroma", "migrate", *APP_SERVICES):
        assert services[name]["build"] == "." and services[name]["pull_policy"] == "build"
        assert services[name]["image"] == services["api1"]["image"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    install = re.search(r"pip install (.+?)(?<!\\)\n", dockerfile, re.S)
    assert install is not None
    assert "--require-hashes -r requirements.txt" in install.group(1)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in install.group(1)
    pins = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^torch==2\.13\.0\+cpu \\$", pins, re.M)
    # The programs the services run are installed by requirements.txt.
    programs = {Path(services[n]["command"][0]).name for n in ("chroma", "migrate", *APP_SERVICES)}
    bin_dir = ROOT / ".venv" / "bin"
    assert sorted(p for p in programs if not (bin_dir / p).exists()) == []
