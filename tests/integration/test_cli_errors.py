"""Every CLI error path, run as a real process: one `error:` line, no traceback, exit 1."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tritonize.server import LocalServer

from .conftest import EMBEDDER, GENERATOR, free_ports

CLI = [sys.executable, "-m", "tritonize.cli"]


def run_cli(*args: str, timeout_s: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout_s,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )  # fmt: skip


def assert_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 1, an `error:` line naming every fragment, and no traceback anywhere."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 1, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors, output
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    return result.stderr


# -- no server needed ---------------------------------------------------------------------------
@pytest.mark.parametrize("problem", ["missing", "directory", "not JSON", "not an object"])
def test_verify_with_an_unreadable_golden_file(tmp_path: Path, problem: str) -> None:
    golden = {
        "missing": tmp_path / "absent.json",
        "directory": tmp_path,
        "not JSON": tmp_path / "broken.json",
        "not an object": tmp_path / "list.json",
    }[problem]
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "list.json").write_text("[1, 2]")
    url = f"127.0.0.1:{free_ports(1)[0]}"  # never reached: the golden file is read first
    stderr = assert_error(run_cli("verify", "--model", "m", "--golden", str(golden), "--url", url))
    assert str(golden) in stderr and "--golden" in stderr


def test_build_without_a_name_says_how_to_give_one(tmp_path: Path) -> None:
    stderr = assert_error(run_cli("build", "--task", "embedding", "--output", str(tmp_path)))
    assert "None" not in stderr
    assert "`name` is required" in stderr and "--name" in stderr


def test_build_refuses_an_unsafe_pickle_checkpoint(tmp_path: Path, minilm_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file

    checkpoint = tmp_path / "pickled"
    shutil.copytree(minilm_dir, checkpoint)
    weights = load_file(checkpoint / "model.safetensors")
    (checkpoint / "model.safetensors").unlink()
    # A Namespace is an arbitrary object to `torch.load(weights_only=True)`: its pickle could
    # as well run code.
    torch.save({**weights, "extra": argparse.Namespace(a=1)}, checkpoint / "pytorch_model.bin")
    stderr = assert_error(
        run_cli("build", "--model", str(checkpoint), "--task", "embedding", "--name", "m",
                "--output", str(tmp_path / "repo"))
    )  # fmt: skip
    assert str(checkpoint) in stderr and "safetensors" in stderr
    assert not (tmp_path / "repo" / "m").exists()


def test_loadtest_with_a_missing_texts_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.txt"
    stderr = assert_error(run_cli("loadtest", "minilm", "--texts-file", str(missing),
                                  "--url", f"127.0.0.1:{free_ports(1)[0]}"))  # fmt: skip
    assert f"`--texts-file` {missing}" in stderr


def test_output_to_a_closed_pipe_exits_quietly(repository: Path) -> None:
    """`tritonize ... | head -1`: the reader is gone; exit as a shell reports SIGPIPE (141)."""
    process = subprocess.Popen([*CLI, "check", str(repository)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the CLI has written anything (it takes >0.1 s to start)
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141, stderr
    assert stderr == ""


def test_version() -> None:
    from tritonize import __version__

    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"tritonize {__version__}"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_ctrl_c_exits_130_without_a_traceback(silent_port: int) -> None:
    process = subprocess.Popen(
        [*CLI, "infer", "minilm", "hello", "--url", f"127.0.0.1:{silent_port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(4)  # imported and waiting for the answer
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr


# -- against the session's server --------------------------------------------------------------
def test_http_against_the_grpc_port(server: LocalServer) -> None:
    stderr = assert_error(run_cli("infer", EMBEDDER, "hello", "--url", server.config.grpc_url))
    assert server.config.grpc_url in stderr and "--protocol grpc" in stderr


def test_unreachable_server_is_named() -> None:
    url = f"127.0.0.1:{free_ports(1)[0]}"
    assert_error(run_cli("infer", EMBEDDER, "hello", "--url", url), url)
    assert_error(run_cli("infer", EMBEDDER, "hello", "--url", url, "--protocol", "grpc"), url)


def test_a_url_that_is_not_host_port() -> None:
    assert_error(run_cli("infer", EMBEDDER, "hi", "--url", "bad:url:x"), "'bad:url:x'", "HOST:PORT")


def test_a_url_whose_port_is_out_of_range() -> None:
    """Before: tritonclient's ValueError, then a traceback from its destructor."""
    for command in (["infer", EMBEDDER, "hi"], ["health", "--model", EMBEDDER]):
        assert_error(
            run_cli(*command, "--url", "127.0.0.1:99999"), "'127.0.0.1:99999'", "HOST:PORT"
        )


def test_a_url_with_a_scheme_is_taken(server: LocalServer) -> None:
    result = run_cli("infer", EMBEDDER, "hi", "--url", f"http://{server.config.http_url}/")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def test_loadtest_that_cannot_write_its_report(server: LocalServer) -> None:
    assert_error(
        run_cli("loadtest", EMBEDDER, "--url", server.config.http_url, "--out", "/proc/report",
                "--metrics-url", server.config.metrics_url),
        "`--out` /proc/report: cannot create it",
    )  # fmt: skip


def test_loadtest_with_an_unreachable_prometheus(server: LocalServer) -> None:
    prometheus = f"http://127.0.0.1:{free_ports(1)[0]}"
    assert_error(
        run_cli("loadtest", EMBEDDER, "--url", server.config.http_url, "--duration", "1s",
                "--metrics-url", server.config.metrics_url, "--prometheus", prometheus),
        f"Prometheus at {prometheus} failed",
    )  # fmt: skip


def test_unknown_model_is_named(server: LocalServer) -> None:
    assert_error(run_cli("infer", "nope", "hi", "--url", server.config.http_url), "`nope`")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_each_command_names_the_other_for_the_wrong_model_kind(
    server: LocalServer, protocol: str
) -> None:
    url = server.config.http_url if protocol == "http" else server.config.grpc_url
    common = ["--url", url, "--protocol", protocol]
    stderr = assert_error(run_cli("generate", EMBEDDER, "Once", *common), "use `tritonize infer ")
    assert f"`{EMBEDDER}`" in stderr
    stderr = assert_error(run_cli("infer", GENERATOR, "Once", *common), "use `tritonize generate ")
    assert f"`{GENERATOR}`" in stderr


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_a_refused_prompt_is_named(server: LocalServer, stream: list[str]) -> None:
    """/generate_stream answers a refusal as one server-sent event, /generate as JSON."""
    prompt = "word " * 500  # over the tiny generator's window
    stderr = assert_error(
        run_cli("generate", GENERATOR, prompt, *stream, "--url", server.config.http_url)
    )
    assert f"model `{GENERATOR}`" in stderr and "`text_input`" in stderr


def test_loadtest_names_the_protocol_that_fits_the_model(server: LocalServer) -> None:
    common = ["--url", server.config.http_url, "--metrics-url", server.config.metrics_url,
              "--duration", "1s"]  # fmt: skip
    assert_error(run_cli("loadtest", EMBEDDER, "--protocol", "sse", *common),
                 f"`{EMBEDDER}` is not a generation model", "--protocol http or grpc")  # fmt: skip
    assert_error(run_cli("loadtest", GENERATOR, *common),
                 f"`{GENERATOR}` is a generation model", "--protocol sse")  # fmt: skip


def test_metrics_on_another_port_says_which_flag_sets_it(server: LocalServer) -> None:
    """The server's metrics are not on :8002: both commands name the URL, flag and variable."""
    wrong = f"http://127.0.0.1:{free_ports(1)[0]}/metrics"
    stderr = assert_error(
        run_cli("loadtest", EMBEDDER, "--url", server.config.http_url, "--scenario", "smoke",
                "--duration", "1s", "--metrics-url", wrong)
    )  # fmt: skip
    assert wrong in stderr and "--metrics-url" in stderr and "TRITONIZE_METRICS_URL" in stderr
    golden = server.config.repository / EMBEDDER / "golden.json"
    result = run_cli("verify", "--model", EMBEDDER, "--golden", str(golden), "--url",
                     server.config.http_url, "--smoke-requests", "4",
                     TRITONIZE_METRICS_URL=wrong)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"FAIL  metrics: cannot scrape {wrong}" in result.stdout
    assert "--metrics-url" in result.stdout and "TRITONIZE_METRICS_URL" in result.stdout


def test_metrics_url_from_the_environment(server: LocalServer) -> None:
    golden = server.config.repository / EMBEDDER / "golden.json"
    result = run_cli("verify", "--model", EMBEDDER, "--golden", str(golden), "--url",
                     server.config.http_url, "--smoke-requests", "4",
                     TRITONIZE_METRICS_URL=server.config.metrics_url)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS  metrics" in result.stdout


# -- options checked before anything starts ------------------------------------------------------
def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """argparse's refusal: exit 2, an `error:` line naming the option, no traceback."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "unexpected" not in output, output
    assert result.returncode == 2, output
    assert all(fragment in result.stderr for fragment in fragments), result.stderr


@pytest.mark.parametrize("value", ["99999", "0", "-1", "http"])
def test_serve_refuses_a_port_out_of_range(tmp_path: Path, value: str) -> None:
    result = run_cli("serve", str(tmp_path), "--http-port", value)
    assert_usage_error(result, "--http-port", "1..65535")


@pytest.mark.parametrize("command", [["infer", EMBEDDER, "hi"], ["health", "--model", EMBEDDER]])
def test_a_timeout_must_be_positive(command: list[str]) -> None:
    assert_usage_error(run_cli(*command, "--timeout", "-1"), "--timeout", "positive")


def test_serve_refuses_one_port_for_two_endpoints(repository: Path) -> None:
    (port,) = free_ports(1)
    result = run_cli("serve", str(repository), "--http-port", str(port), "--grpc-port", str(port))
    assert_error(result, f"http and grpc ports are both {port}")


def test_serve_refuses_a_tritonserver_that_is_not_executable(repository: Path) -> None:
    result = run_cli("serve", str(repository), "--tritonserver", "/etc/passwd")
    assert_error(result, "--tritonserver /etc/passwd: not an executable file")


def test_infer_against_the_metrics_port(server: LocalServer) -> None:
    url = f"127.0.0.1:{server.config.metrics_port}"
    assert_error(run_cli("infer", EMBEDDER, "hi", "--url", url), url, "not Triton's HTTP API")


def test_health_against_the_grpc_port(server: LocalServer) -> None:
    url = server.config.grpc_url
    stderr = assert_error(run_cli("health", "--url", url, "--api-key", "k"), url, "gRPC port")
    assert "\\x" not in stderr  # no bytes of the gRPC answer


def test_serve_names_the_flag_tritonserver_refused(repository: Path) -> None:
    """tritonserver prints the cause first, then 40 lines of usage: the cause must show."""
    http, grpc, metrics = free_ports(3)
    result = run_cli("serve", str(repository), "--http-port", str(http), "--grpc-port", str(grpc),
                     "--metrics-port", str(metrics), "--triton-arg=--bogus-flag=1")  # fmt: skip
    assert_error(result, "unrecognized option '--bogus-flag=1'")


def test_serve_names_a_host_it_cannot_listen_on(repository: Path) -> None:
    """Before: "port ... is in use (Cannot assign requested address)"."""
    result = run_cli("serve", str(repository), "--host", "192.0.2.1")  # TEST-NET: not ours
    stderr = assert_error(result, "cannot listen on 192.0.2.1", "--host")
    assert "in use" not in stderr


def test_serve_refuses_an_empty_key(repository: Path) -> None:
    assert_error(run_cli("serve", str(repository), "--api-key", ""), "--api-key", "empty")
