"""The compose gateway service and the Prometheus config that compose mounts: the gateway's
command parses with the real CLI parser and Prometheus scrapes the port it serves; every rule
file the config loads is mounted, and promtool accepts the config with those files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tritonize.monitor.prometheus import RULE_FILES

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = ROOT / "monitoring" / "prometheus.yml"
SECRET = "k3y"


def compose_services() -> dict:
    """docker-compose.yml's services, `${VAR:-default}` at its default and `${VAR:?...}`
    (the required secrets) at SECRET."""
    text = (ROOT / "docker-compose.yml").read_text()
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)
    text = re.sub(r"\$\{\w+:\?[^}]*\}", SECRET, text)
    return yaml.safe_load(text)["services"]


def scrape_targets() -> dict[str, list[str]]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return {
        job["job_name"]: [t for group in job["static_configs"] for t in group["targets"]]
        for job in config["scrape_configs"]
    }


def container_port(published: str) -> int:
    """The container side of a `HOST_IP:HOST_PORT:CONTAINER_PORT` mapping."""
    return int(published.rsplit(":", 1)[1])


def test_the_gateway_service_runs_tritonize_from_the_triton_image() -> None:
    services = compose_services()
    gateway, triton = services["gateway"], services["triton"]
    assert gateway["image"] == triton["image"]
    assert gateway["entrypoint"] == ["tritonize", "gateway"]  # not the image's `serve`
    assert "profiles" not in gateway  # it serves beside Triton, monitored or not
    assert all(port.startswith("127.0.0.1:") for port in gateway["ports"])  # loopback only
    assert "triton" in gateway["depends_on"]
    # Triton's admin key (listing models needs it); the clients' key only when the host has one.
    environment = gateway["environment"]
    assert environment["TRITONIZE_API_KEY"] == SECRET
    assert environment["TRITONIZE_OPENAI_API_KEY"] is None  # compose: passed on only when set


@pytest.mark.parametrize("client_key", [None, "client-k3y"])
def test_the_gateway_command_parses_and_prometheus_scrapes_it(
    monkeypatch: pytest.MonkeyPatch, client_key: str | None
) -> None:
    """The compose command through the real CLI parser, in the environment compose gives it:
    Triton's gRPC port on the triton service, the published port, the scraped port."""
    from tritonize.cli import _parser, cmd_gateway
    from tritonize.client import host_port

    services = compose_services()
    gateway = services["gateway"]
    environment = {k: v for k, v in gateway["environment"].items() if v is not None}
    if client_key is not None:
        environment["TRITONIZE_OPENAI_API_KEY"] = client_key
    for name in ("TRITONIZE_API_KEY", "TRITONIZE_OPENAI_API_KEY", "TRITONIZE_HOST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    args = _parser().parse_args(["gateway", *gateway["command"]])
    assert args.run is cmd_gateway
    assert (args.triton_api_key, args.api_key) == (SECRET, client_key)
    triton_host, triton_port = host_port(args.triton).rsplit(":", 1)
    assert triton_host == "triton" and int(triton_port) == 8001  # Triton's gRPC
    assert int(triton_port) in {container_port(p) for p in services["triton"]["ports"]}
    assert args.host == "0.0.0.0"  # reachable from Prometheus on the compose network
    assert [container_port(p) for p in gateway["ports"]] == [args.port]
    assert scrape_targets()["gateway"] == [f"gateway:{args.port}"]


def test_the_gateway_serves_the_path_prometheus_scrapes() -> None:
    from tritonize.gateway import GatewayConfig
    from tritonize.gateway.app import create_app

    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "gateway"]
    paths = {getattr(route, "path", None) for route in create_app(GatewayConfig()).routes}
    assert job.get("metrics_path", "/metrics") in paths


def mounted_rule_files() -> dict[str, Path]:
    """Container path -> host file, for each file mounted into the prometheus service."""
    mounts = {}
    for volume in compose_services()["prometheus"]["volumes"]:
        host, container, *_ = volume.split(":")
        if host.startswith("./"):
            mounts[container] = ROOT / host
    return mounts


def test_every_rule_file_the_config_loads_is_mounted() -> None:
    rule_files = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]
    mounts = mounted_rule_files()
    assert set(rule_files) <= set(mounts), "a rule file Prometheus loads is not mounted"
    assert [mounts[path].name for path in rule_files] == list(RULE_FILES)  # as locally
    assert all(mounts[path].is_file() for path in rule_files)
    assert mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG


def promtool_check(config: dict, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check config` of `config` with its rule files where compose mounts them from."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `apt-get install prometheus` (scripts/setup.sh does it)"
    mounts = mounted_rule_files()
    local = dict(config, rule_files=[str(mounts[path]) for path in config["rule_files"]])
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(local))
    return subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)


def test_promtool_accepts_the_config_with_its_rule_files(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    result = promtool_check(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    mounts = mounted_rule_files()
    for path in config["rule_files"]:  # each was read and its rules counted
        checked = rf"Checking {re.escape(str(mounts[path]))}\n\s+SUCCESS: [1-9]\d* rules found"
        assert re.search(checked, result.stdout), result.stdout
    broken = dict(config, scrape_configs=[*config["scrape_configs"], {"job_name": "gateway"}])
    assert promtool_check(broken, tmp_path).returncode != 0  # a duplicate job: the check can fail
