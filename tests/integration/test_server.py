"""The local server's life cycle: ports, repository checks, the API key, stopping, the CLI."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tritonize.client import TritonizeClient
from tritonize.errors import InferenceError, RepositoryError, ServerError, TritonizeError
from tritonize.monitor.prometheus import PrometheusSource
from tritonize.processes import is_alive
from tritonize.server import LocalServer
from tritonize.server.bundled import BundledTriton

from .conftest import CLASSIFIER, EMBEDDER, free_ports, server_config

CLI = [sys.executable, "-m", "tritonize.cli"]


def test_busy_port_is_named(repository: Path) -> None:
    config = server_config(repository)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", config.grpc_port))
        taken.listen()
        busy = f"grpc port {config.grpc_port} on 127.0.0.1 is in use"
        with pytest.raises(ServerError, match=busy):
            LocalServer(config).start()


def test_invalid_repository_is_refused_before_launch(repository: Path, tmp_path: Path) -> None:
    broken = tmp_path / "repo"
    (broken / "minilm").mkdir(parents=True)
    (broken / "minilm" / "config.pbtxt").write_text('name: "minilm"\nmax_batch_size: ${n}\n')
    server = LocalServer(server_config(broken))
    with pytest.raises(RepositoryError, match="model `minilm`: config.pbtxt does not parse"):
        server.start()
    assert server.process is None


def test_server_binds_loopback_only(server: LocalServer) -> None:
    assert server.config.host == "127.0.0.1"
    assert "--http-address=127.0.0.1" in server.config.arguments(Path("b"), Path("d"), "p_")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_repository_api_needs_the_key(server: LocalServer, protocol: str) -> None:
    url = server.config.http_url if protocol == "http" else server.config.grpc_url
    with TritonizeClient(url, protocol, api_key="wrong-key") as intruder:
        with pytest.raises(InferenceError, match="(?i)restricted|permission|authoriz"):
            intruder.unload_model(CLASSIFIER)
        assert intruder.classify(CLASSIFIER, ["still loaded"])[0].label
    with TritonizeClient(url, protocol, api_key=server.config.api_key) as operator:
        operator.unload_model(CLASSIFIER)
        with pytest.raises(InferenceError):
            operator.classify(CLASSIFIER, ["unloaded"])
        operator.load_model(CLASSIFIER)
        assert operator.classify(CLASSIFIER, ["back again"])[0].label


def test_server_dies_with_its_parent(repository: Path) -> None:
    config = server_config(repository)
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tritonize.server import LocalServer, ServerConfig\n"
        f"s = LocalServer(ServerConfig(Path({str(repository)!r}), http_port={config.http_port}, "
        f"grpc_port={config.grpc_port}, metrics_port={config.metrics_port}, "
        f"log_file=Path({str(config.log_path)!r})))\n"
        "s.start()\n"
        "print(s.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()  # SIGKILL: no chance to clean up
    parent.wait()
    deadline = time.monotonic() + 30
    while is_alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not is_alive(child), "tritonserver outlived its parent"


def test_reloading_models_under_traffic_keeps_the_server_up(server: LocalServer) -> None:
    """Loading a loaded model starts its new instances before the old ones end; the steps'
    custom metrics of both lived in the same series, and the old ones' removal freed what the
    new ones went on writing: tritonserver died of a corrupted heap."""
    url, key = server.config.http_url, server.config.api_key
    with TritonizeClient(url, "http", api_key=key) as operator:
        for round in range(3):
            for model in (CLASSIFIER, EMBEDDER):
                assert operator.classify(CLASSIFIER, [f"round {round}"])[0].label
                assert operator.embed(EMBEDDER, [f"round {round}"]).shape[0] == 1
                operator.load_model(model)
        time.sleep(2)  # the old instances end after the new ones are ready
        assert operator.classify(CLASSIFIER, ["after the reloads"])[0].label
        assert operator.embed(EMBEDDER, ["after the reloads"]).shape[0] == 1
    assert server.process is not None and server.process.poll() is None, "tritonserver died"


def test_cli_serve_with_prometheus_infer_and_sigterm(repository: Path) -> None:
    config = server_config(repository)
    (prometheus_port,) = free_ports(1)
    binary = BundledTriton.find().binary  # named as the container names its own
    serve = subprocess.Popen(
        [*CLI, "serve", str(repository), "--http-port", str(config.http_port),
         "--grpc-port", str(config.grpc_port), "--metrics-port", str(config.metrics_port),
         "--prometheus", "--prometheus-port", str(prometheus_port), "--tritonserver", str(binary),
         "--log-file", str(config.log_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert serve.stdout is not None
    try:
        banner = list(iter(serve.stdout.readline, "Ctrl-C stops it.\n"))
        assert banner[1].startswith("ready in"), banner
        assert f"Prometheus http://127.0.0.1:{prometheus_port}" in "".join(banner)
        up = PrometheusSource(f"http://127.0.0.1:{prometheus_port}").query('up{job="triton"}')
        assert up[0]["value"][1] == "1"
        for protocol, url in (("http", config.http_url), ("grpc", config.grpc_url)):
            infer = subprocess.run(
                [*CLI, "infer", EMBEDDER, "hello", "world", "--protocol", protocol, "--url", url,
                 "--json"],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            assert '"EMBEDDING": [[' in infer.stdout
        bad = subprocess.run(
            [*CLI, "infer", EMBEDDER, "", "--url", config.http_url], capture_output=True, text=True
        )
        assert bad.returncode == 1
        assert "`TEXT`[0] is empty" in bad.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0
    output = serve.stdout.read()
    assert "stopping (SIGTERM)" in output
    assert "drained and stopped" in output
    assert "loading: " in config.log_path.read_text()  # the log went where it was asked to
    with pytest.raises(TritonizeError):  # Prometheus went with it
        PrometheusSource(f"http://127.0.0.1:{prometheus_port}").query("up")


def test_health_lists_only_public_models_while_an_ensemble_is_unloaded(
    server: LocalServer,
) -> None:
    """Its steps stay loaded, and without the ensemble's config they looked public."""
    from tritonize.server.health import public_models

    url, key = server.config.http_url, server.config.api_key
    assert CLASSIFIER in public_models(url, key)
    with TritonizeClient(url, "http", api_key=key) as operator:
        operator.unload_model(CLASSIFIER)
        try:
            listed = public_models(url, key)
        finally:
            operator.load_model(CLASSIFIER)
    assert not [name for name in listed if name.startswith(f"{CLASSIFIER}_")], listed
    assert CLASSIFIER in listed  # unloaded, it is still a public model: its probe fails
