"""MLflow as the registry, live: a real `mlflow server` (SQLite store, proxied artifacts) holding
a tiny classifier in two versions (a logged checkpoint folder, then an `mlflow.transformers`
model) and an alias; resolved, built from, logged, and every error named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import free_ports, wait_for
from tritonize.errors import RegistryError
from tritonize.registry import experiment_name, log_build, resolve_model, set_alias
from tritonize.registry.tracking import metric_name
from tritonize.repository.manifest import read_manifest
from tritonize.repository.writer import build_repository
from tritonize.spec import BuildSpec
from tritonize.tasks.build import StepNames

# MLflow 3 reports usage by default: never from the tests, nor from the server they start.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

MODEL = "tiny-sentiment"
NOT_A_CHECKPOINT = "tiny-notes"
STARTUP_S = 180


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a free port, stopped (its whole process group) at the end."""
    root = tmp_path_factory.mktemp("mlflow")
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    log_path = root / "server.log"
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        # No GenAI job runner: it keeps stores in /dev/shm folders that outlive the server.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)  # fmt: skip
    try:
        if not wait_for(lambda: server.poll() is not None or _healthy(url), STARTUP_S):
            pytest.fail(f"mlflow server not healthy in {STARTUP_S} s:\n{log_path.read_text()}")
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited {server.returncode}:\n{log_path.read_text()}")
        yield url
    finally:
        _stop(server)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group (the CLI and its uvicorn worker), then SIGKILL after 15 s."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        if server.poll() is not None:
            return
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def registry(
    mlflow_server: str, classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """MODEL v1 (a checkpoint folder a run logged), v2 (mlflow.transformers), champion -> v2;
    NOT_A_CHECKPOINT v1, a run's notes. MLFLOW_TRACKING_URI points at the server meanwhile."""
    import mlflow
    import transformers

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    client = mlflow.MlflowClient(mlflow_server, registry_uri=mlflow_server)
    experiment = client.create_experiment("training")
    client.create_registered_model(MODEL)
    _register_files(client, experiment, MODEL, classifier_dir, "checkpoint")
    pipeline = transformers.pipeline("text-classification", model=str(classifier_dir))
    with mlflow.start_run(experiment_id=experiment):
        mlflow.transformers.log_model(pipeline, name="model", registered_model_name=MODEL,
                                      pip_requirements=["transformers"])  # fmt: skip
    client.set_registered_model_alias(MODEL, "champion", "2")
    notes = tmp_path_factory.mktemp("notes")
    (notes / "README.md").write_text("not a model")
    (notes / "weights.pkl").write_bytes(b"\0")
    client.create_registered_model(NOT_A_CHECKPOINT)
    _register_files(client, experiment, NOT_A_CHECKPOINT, notes, "notes")
    yield mlflow_server
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def _register_files(client: object, experiment: str, name: str, files: Path, folder: str) -> None:
    """A run logs `files` under `folder`; a new version of `name` points at them."""
    run = client.create_run(experiment)  # type: ignore[attr-defined]
    run_id = run.info.run_id
    client.log_artifacts(run_id, str(files), folder)  # type: ignore[attr-defined]
    client.set_terminated(run_id)  # type: ignore[attr-defined]
    client.create_model_version(name, f"runs:/{run_id}/{folder}", run_id=run_id)  # type: ignore[attr-defined]


def test_a_version_number_resolves_to_its_checkpoint(registry: str, tmp_path: Path) -> None:
    resolved = resolve_model(f"models:/{MODEL}/1", tmp_path / "v1")
    assert (resolved.name, resolved.version, resolved.alias) == (MODEL, 1, None)
    assert resolved.checkpoint == tmp_path / "v1"  # the version's source is the folder itself
    assert resolved.source == f"runs:/{resolved.run_id}/checkpoint"
    assert (resolved.checkpoint / "config.json").is_file()
    assert (resolved.checkpoint / "model.safetensors").is_file()


def test_an_alias_resolves_build_and_log(registry: str, tmp_path: Path) -> None:
    """champion -> v2, an mlflow.transformers model: built from, then logged as a run."""
    import mlflow

    resolved = resolve_model(f"models:/{MODEL}@champion", tmp_path / "v2")
    assert (resolved.version, resolved.alias, resolved.uri) == (2, "champion", f"models:/{MODEL}/2")
    assert resolved.source.startswith("models:/m-")  # MLflow 3: a logged model
    spec = BuildSpec(name="sentiment", task="classification", model=resolved.checkpoint,
                     output=tmp_path / "repository", max_batch_size=8, max_seq_len=64,
                     version=2, registry=resolved.uri)  # fmt: skip
    start = time.perf_counter()
    result = build_repository(spec)
    seconds = time.perf_counter() - start
    engine = next(m for m in result.models if (result.repository / m / "2" / "model.onnx").exists())
    assert read_manifest(result.repository / engine / "2")["spec"]["registry"] == resolved.uri

    run_id = log_build(spec, result, {"build": seconds}, resolved)

    client = mlflow.MlflowClient(registry, registry_uri=registry)
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == experiment_name("sentiment") == "tritonize/sentiment"
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["task"] == "classification" and params["max_seq_len"] == "64"
    assert params["registry"] == f"models:/{MODEL}/2"
    assert params["model"] == str(resolved.checkpoint)
    assert metrics["build_seconds"] == pytest.approx(seconds)
    diffs = {metric_name(f"max_abs_diff.{case}"): d for case, d in result.max_abs_diff.items()}
    assert "max_abs_diff.max_batch_8_mixed_lengths_padded" in diffs
    assert {k: metrics[k] for k in diffs} == pytest.approx(diffs)
    assert tags["task"] == "classification" and tags["target"] == "local"
    assert tags["model_version"] == "2" and tags["registry"] == f"models:/{MODEL}/2"
    assert tags["registry_run_id"] == resolved.run_id

    ensemble = result.models[0]
    logged = {a.path for a in client.list_artifacts(run_id, f"repository/{ensemble}")}
    assert f"repository/{ensemble}/golden.json" in logged
    manifest_path = f"repository/{engine}/2/manifest.json"
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=manifest_path,
                                                dst_path=str(tmp_path / "logged"),
                                                tracking_uri=registry)  # fmt: skip
    logged_manifest = json.loads(Path(local).read_text())
    assert logged_manifest["spec"]["registry"] == f"models:/{MODEL}/2"
    assert logged_manifest == read_manifest(result.repository / engine / "2")


def test_set_alias_moves_it(registry: str, tmp_path: Path) -> None:
    set_alias(MODEL, "canary", 1)
    assert resolve_model(f"models:/{MODEL}@canary", tmp_path / "canary").version == 1
    set_alias(MODEL, "canary", 2)
    assert resolve_model(f"models:/{MODEL}@canary", tmp_path / "canary").version == 2


def test_set_alias_to_a_missing_version_names_the_versions(registry: str) -> None:
    with pytest.raises(RegistryError, match=f"`{MODEL}` has no version 9: .* `1`, `2`"):
        set_alias(MODEL, "champion", 9)


def test_a_missing_version_names_the_versions(registry: str, tmp_path: Path) -> None:
    with pytest.raises(
        RegistryError, match=f"`{MODEL}` has no version 7: its versions are `1`, `2`"
    ):
        resolve_model(f"models:/{MODEL}/7", tmp_path)


def test_a_missing_alias_names_the_aliases(registry: str, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=f"`{MODEL}` has no alias `prod`: .*`champion -> 2`"):
        resolve_model(f"models:/{MODEL}@prod", tmp_path)


def test_a_missing_model_names_the_models(registry: str, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=f"`sentimnet` does not exist .*`{MODEL}`"):
        resolve_model("models:/sentimnet/1", tmp_path)


def test_a_version_that_is_no_checkpoint_says_what_it_holds(registry: str, tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as info:
        resolve_model(f"models:/{NOT_A_CHECKPOINT}/1", tmp_path / "notes")
    message = str(info.value)
    assert "not a supported checkpoint" in message
    assert "found `README.md`, `weights.pkl`" in message and "config.json" in message


def test_an_unreachable_server_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(RegistryError, match="cannot be reached .*MLFLOW_TRACKING_URI"):
        resolve_model(f"models:/{MODEL}/1", tmp_path)
    assert time.monotonic() - start < 10  # not MLflow's minutes of retries


def test_without_a_tracking_uri_the_local_store_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, classifier_dir: Path
) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    client = mlflow.MlflowClient("sqlite:///mlflow.db", registry_uri="sqlite:///mlflow.db")
    client.create_registered_model("local-sentiment")
    _register_files(client, client.create_experiment("local"), "local-sentiment",
                    classifier_dir, "checkpoint")  # fmt: skip
    resolved = resolve_model("models:/local-sentiment/1", tmp_path / "resolved")
    assert (resolved.checkpoint / "config.json").is_file()
    assert (tmp_path / "mlflow.db").is_file()
    assert (tmp_path / "mlruns").is_dir()  # the store's artifacts, beside it


def test_the_build_command_builds_from_the_registry_and_logs_a_run(
    registry: str, tmp_path: Path
) -> None:
    """`tritonize build --model models:/NAME/1` as a user runs it, MLFLOW_TRACKING_URI set."""
    import mlflow

    output = tmp_path / "repository"
    done = subprocess.run(
        [sys.executable, "-m", "tritonize.cli", "build", "--model", f"models:/{MODEL}/1",
         "--task", "classification", "--name", "sentiment", "--output", str(output),
         "--max-batch-size", "8", "--max-seq-len", "64"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(output / StepNames("sentiment", 1).engine / "1")
    assert manifest["spec"]["registry"] == f"models:/{MODEL}/1"
    run_id = done.stdout.split("logged MLflow run ")[1].split()[0]
    run = mlflow.MlflowClient(registry, registry_uri=registry).get_run(run_id)
    assert run.data.tags["registry"] == f"models:/{MODEL}/1"
