"""The compose deployment: valid against the Compose specification, one pinned release."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    checker = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    assert validate(COMPOSE).returncode == 0, validate(COMPOSE).stdout
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("shm_size: 1gb", "shm_size: [1]"))
    assert validate(broken).returncode != 0  # the validation can fail


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_release_is_pinned_in_one_place(services: dict) -> None:
    pins = [
        path.relative_to(ROOT)
        for path in [ROOT / ".env", COMPOSE, *sorted((ROOT / "docker").iterdir())]
        if re.search(r"\b\d{2}\.\d{2}-py3|TRITON_VERSION=\d", path.read_text())
    ]
    assert pins == [Path(".env")]
    for dockerfile in ("triton.Dockerfile", "build.Dockerfile"):
        text = (ROOT / "docker" / dockerfile).read_text()
        assert re.search(r"^ARG TRITON_VERSION$", text, re.M)
        assert ":${TRITON_VERSION}-py3" in text
    assert "tritonserver:${TRITON_VERSION}" in (ROOT / "docker/triton.Dockerfile").read_text()
    assert "tensorrt:${TRITON_VERSION}" in (ROOT / "docker/build.Dockerfile").read_text()


def test_triton_service(services: dict) -> None:
    triton = services["triton"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert triton["ports"] == [f"127.0.0.1:{p}:{p}" for p in (8000, 8001, 8002)]
    assert "./model_repository:/models:ro" in triton["volumes"]
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])


def test_build_service_is_a_gpu_profile(services: dict) -> None:
    build = services["build"]
    assert build["profiles"] == ["build"]
    assert "./model_repository:/model_repository" in build["volumes"]
    assert build["deploy"] == services["triton"]["deploy"]


def test_serving_entry_point_requires_a_key_and_checks_first() -> None:
    script = ROOT / "docker" / "serve.sh"
    text = script.read_text()
    assert text.index("tritonize check /models") < text.index("exec tritonserver")
    assert "--http-restricted-api=" in text and "--grpc-restricted-protocol=" in text
    env = {k: v for k, v in os.environ.items() if k != "TRITONIZE_API_KEY"}
    result = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "set TRITONIZE_API_KEY" in result.stderr


def test_monitoring_and_loadtest_profiles(services: dict) -> None:
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    assert services["locust-master"]["profiles"] == ["loadtest"]
    assert services["locust-worker"]["profiles"] == ["loadtest"]
    assert (
        "./monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in services["prometheus"]["volumes"]
    )
    for name in ("prometheus", "grafana", "locust-master"):
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"])
    assert "--worker" in services["locust-worker"]["command"]
