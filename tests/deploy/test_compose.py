"""The Docker deployments as files (Docker cannot run here): pinned images, existing mounts, defined variables,
health checks, ordered start, FIWARE ports, real CLI commands, and a slim non-root multi-stage image."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from cli.main import app

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILES = {"fiware": DOCKER / "compose.fiware.yaml", "embedded": DOCKER / "compose.embedded.yaml"}
ENV_EXAMPLE = REPO / ".env.example"
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}|(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")
OUR_IMAGE = "${CLIMABOROUGH_IMAGE}"
# ARCHITECTURE.md "Ports" plus Grafana and Keycloak: container port each service must publish.
PORTS = {
    "fiware": {"orion-ld": {1026}, "iot-agent": {4041, 7896}, "mosquitto": {1883}, "api": {8000},
               "grafana": {3000}, "keycloak": {8080}},
    "embedded": {"broker": {1026}, "iot-agent": {4041, 7896}, "mosquitto": {1883}, "api": {8000}, "grafana": {3000}},
}  # fmt: skip
ONE_SHOT = {"config-apply"}


def compose(kind: str) -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILES[kind].read_text(encoding="utf-8"))


def services(kind: str) -> dict[str, dict[str, Any]]:
    return compose(kind)["services"]


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


KINDS = pytest.mark.parametrize("kind", sorted(COMPOSE_FILES))


@KINDS
def test_every_image_is_pinned_to_a_version(kind: str) -> None:
    for name, service in services(kind).items():
        image = service["image"]
        if image == OUR_IMAGE:
            assert service["build"]["dockerfile"] == "docker/Dockerfile", name
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
    assert re.fullmatch(r"climaborough:\d+\.\d+\.\d+", env_example()["CLIMABOROUGH_IMAGE"])


@KINDS
def test_every_mounted_file_exists(kind: str) -> None:
    for name, service in services(kind).items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DOCKER / source).resolve().exists(), f"{name}: {source} does not exist"
        if "build" in service:
            assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).exists()


@KINDS
def test_every_variable_is_defined_in_env_example(kind: str) -> None:
    defined = env_example()
    used = {a or b for a, b in VARIABLE.findall(COMPOSE_FILES[kind].read_text(encoding="utf-8"))}
    assert used, "the compose file uses no variables?"
    assert used <= set(defined), f"missing in .env.example: {sorted(used - set(defined))}"


def test_env_example_holds_no_secret() -> None:
    for name, value in env_example().items():
        if re.search("PASSWORD|SECRET|TOKEN", name):
            assert value == "change-me", f"{name} must be a placeholder in .env.example"


def test_no_secret_is_written_into_a_compose_file() -> None:
    for path in COMPOSE_FILES.values():
        for name, service in yaml.safe_load(path.read_text(encoding="utf-8"))["services"].items():
            for key, value in (service.get("environment") or {}).items():
                if re.search("PASSWORD|SECRET", key):
                    assert VARIABLE.fullmatch(str(value)), f"{path.name} {name}: {key} must come from .env"


@KINDS
def test_every_long_running_service_has_a_health_check(kind: str) -> None:
    for name, service in services(kind).items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            continue
        check = service.get("healthcheck", {}).get("test")
        assert check and check[0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"


@KINDS
def test_dependencies_wait_for_health_or_completion(kind: str) -> None:
    all_services = services(kind)
    for name, service in all_services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in all_services, f"{name} depends on unknown {dependency}"
            wanted = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert rule["condition"] == wanted, f"{name} → {dependency}"
    for name in ("kpi-engine", "twin"):
        assert "config-apply" in all_services[name]["depends_on"], f"{name} starts after its subscriptions exist"


@KINDS
def test_published_ports_match_the_architecture(kind: str) -> None:
    all_services = services(kind)
    for name, ports in PORTS[kind].items():
        published = {int(str(port).rsplit(":", 1)[-1]) for port in all_services[name].get("ports", [])}
        assert ports <= published, f"{name}: {published}"
        for port in all_services[name]["ports"]:
            host_side = str(port).rsplit(":", 1)[0]
            assert host_side.rsplit(":", 1)[-1] == str(port).rsplit(":", 1)[-1], f"{name}: {port} remaps the port"


def test_the_broker_is_reachable_from_outside_only_through_the_gateway() -> None:
    for kind, broker in (("fiware", "orion-ld"), ("embedded", "broker")):
        assert all(str(port).startswith("127.0.0.1:") for port in services(kind)[broker]["ports"])


def test_fiware_deployment_runs_orion_ld_with_troe_on_timescaledb_and_multiservice() -> None:
    fiware = services("fiware")
    command = fiware["orion-ld"]["command"]
    for flag in ("-troe", "-troeHost timescaledb", "-multiservice", "-dbhost mongo"):
        assert flag in command
    assert fiware["orion-ld"]["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    mounts = " ".join(fiware["troe-setup"]["volumes"])
    assert "../broker_config/sql:" in mounts
    script = (DOCKER / "troe" / "apply.sh").read_text(encoding="utf-8")
    assert "troe.sql" in script and "troe_indexes.sql" in script
    assert script.index("troe.sql") < script.index("troe_indexes.sql")
    realm = [v for v in fiware["keycloak"]["volumes"] if "broker_config/keycloak/" in v]
    assert realm and "--import-realm" in fiware["keycloak"]["command"]
    assert any("broker_config/mosquitto/mosquitto.conf" in v for v in fiware["mosquitto"]["volumes"])
    assert any(v.startswith("../broker_config/contexts:") for v in fiware["ld-context"]["volumes"])


def _cli_paths() -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()

    def walk(group: Any, prefix: tuple[str, ...]) -> None:
        for name, command in getattr(group, "commands", {}).items():
            paths.add((*prefix, name))
            walk(command, (*prefix, name))

    walk(typer.main.get_command(app), ())
    return paths


@KINDS
def test_platform_services_run_real_climaborough_commands(kind: str) -> None:
    known = _cli_paths()
    for name, service in services(kind).items():
        if service["image"] != OUR_IMAGE:
            continue
        words = [word for word in service["command"] if not word.startswith("-")]
        path = tuple(words[:2]) if tuple(words[:2]) in known else tuple(words[:1])
        assert path in known, f"{name}: climaborough {' '.join(service['command'])} is not a command"


def test_dockerfile_is_multi_stage_slim_and_runs_as_a_non_root_user() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", dockerfile, flags=re.MULTILINE | re.IGNORECASE)
    assert len(stages) >= 2
    for image, _ in stages:
        assert "slim" in image and not image.endswith(":latest")
    final = dockerfile[dockerfile.rindex("\nFROM") :]
    assert "COPY --from=build" in final
    users = re.findall(r"^USER\s+(\S+)", final, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^ENTRYPOINT \[\"climaborough\"\]", final, flags=re.MULTILINE)
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert ".venv" in ignored and ".git" in ignored
