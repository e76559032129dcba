"""The compose deployment: valid against the Compose specification, one pinned release."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tritonize.repository.builds import HISTORY
from tritonize.repository.golden import GOLDEN

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
    # Readiness stays 200 with a dead stub: the check sends each model a request.
    assert triton["healthcheck"]["test"][:3] == ["CMD", "tritonize", "health"]
    assert triton["stop_grace_period"] == "45s"  # the drain (30 s) fits in it


def test_build_service_is_a_gpu_profile(services: dict) -> None:
    build = services["build"]
    assert build["profiles"] == ["build"]
    assert "./model_repository:/model_repository" in build["volumes"]
    assert build["deploy"] == services["triton"]["deploy"]


def test_serving_entry_point_requires_a_key_and_checks_first() -> None:
    script = ROOT / "docker" / "serve.sh"
    text = script.read_text()
    assert text.index('tritonize check "$models"') < text.index("exec tritonize serve")
    env = {k: v for k, v in os.environ.items() if k != "TRITONIZE_API_KEY"}
    result = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "set TRITONIZE_API_KEY" in result.stderr


def test_the_container_serves_under_supervision() -> None:
    """The entry point's command is a valid `tritonize serve` of the image's own tritonserver."""
    from tritonize.cli import _parser, cmd_serve

    text = (ROOT / "docker" / "serve.sh").read_text()
    command = text[text.index("exec tritonize serve") :].replace("\\\n", " ")
    argv = shlex.split(command.replace('"$@"', "").replace('"$models"', "/models"))[2:]
    args = _parser().parse_args(argv)
    assert args.run is cmd_serve
    assert (args.repository, args.tritonserver) == ("/models", "/opt/tritonserver/bin/tritonserver")
    assert args.log_file == "-"  # the server's log goes to the container's output


def entry_point(dockerfile: Path) -> list[str]:
    """The last ENTRYPOINT instruction's exec form (Docker uses the last one)."""
    (*_, last) = re.findall(r"^ENTRYPOINT\s+(.+)$", dockerfile.read_text(), re.M)
    return json.loads(last)


def test_nvidia_entry_point_stays_in_front_of_ours() -> None:
    """NVIDIA's entry point sets up CUDA forward compatibility, then execs the rest."""
    dockerfile = ROOT / "docker" / "triton.Dockerfile"
    nvidia, ours = entry_point(dockerfile)
    assert nvidia == "/opt/nvidia/nvidia_entrypoint.sh"
    assert f"COPY docker/serve.sh {ours}" in dockerfile.read_text()


RECORDER = """#!{python}
import json, os, sys
record = {{"argv": sys.argv[1:], "flag": os.environ.get("{flag}")}}
with open(os.path.join(os.environ["RECORDS"], sys.argv[1] + ".json"), "w") as out:
    json.dump(record, out)
"""


def run_entry_point(tmp_path: Path, manifests: dict[str, dict]) -> dict[str, dict]:
    """Run docker/serve.sh on a repository holding `manifests`, with a `tritonize` on PATH that
    records how it was called; returns the records of `check` and `serve`."""
    from tritonize.engine.compat import VERSION_COMPATIBLE_ENV

    repository, tools, records = tmp_path / "models", tmp_path / "bin", tmp_path / "records"
    for where, manifest in manifests.items():
        (repository / where).mkdir(parents=True)
        (repository / where / "manifest.json").write_text(json.dumps(manifest, indent=2))
    repository.mkdir(exist_ok=True)
    tools.mkdir()
    records.mkdir()
    recorder = tools / "tritonize"
    recorder.write_text(RECORDER.format(python=sys.executable, flag=VERSION_COMPATIBLE_ENV))
    recorder.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != VERSION_COMPATIBLE_ENV}
    env |= {
        "PATH": f"{tools}{os.pathsep}{env['PATH']}",
        "RECORDS": str(records),
        "TRITONIZE_API_KEY": "k3y",
        "TRITONIZE_MODELS": str(repository),
    }
    script = ROOT / "docker" / "serve.sh"
    result = subprocess.run(["sh", str(script), "--drain-timeout", "5"], env=env, text=True,
                            capture_output=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {path.stem: json.loads(path.read_text()) for path in records.glob("*.json")}


def tritonserver_arguments(serve_argv: list[str]) -> list[str]:
    """The tritonserver command line that `tritonize serve` with these arguments runs."""
    from tritonize.cli import _parser, cmd_serve, serve_config

    args = _parser().parse_args(serve_argv)
    assert args.run is cmd_serve
    return serve_config(args).arguments(Path(args.tritonserver), None, "prefix")


def plan_manifest(version_compatible: bool) -> dict:
    return {
        "spec": {"task": "embedding", "target": "tensorrt"},
        "tensorrt": {"version": "10.13.2.6", "compute_capability": "9.0",
                     "version_compatible": version_compatible},
    }  # fmt: skip


def test_entry_point_lets_triton_load_version_compatible_plans(tmp_path: Path) -> None:
    from tritonize.engine.compat import TRITON_VERSION_COMPATIBLE_FLAG

    manifests = {"minilm/1": plan_manifest(False), "sentiment/2": plan_manifest(True)}
    calls = run_entry_point(tmp_path, manifests)
    assert calls["check"] == {"argv": ["check", str(tmp_path / "models")], "flag": "true"}
    assert calls["serve"]["flag"] == "true"
    arguments = tritonserver_arguments(calls["serve"]["argv"])
    assert arguments.count(TRITON_VERSION_COMPATIBLE_FLAG) == 1
    assert arguments[0] == "/opt/tritonserver/bin/tritonserver"
    assert "--exit-on-error=true" in arguments  # the flag joins tritonize's own arguments
    assert calls["serve"]["argv"][-2:] == ["--drain-timeout", "5"]  # the caller's still follow


@pytest.mark.parametrize(
    "manifests",
    [{}, {"minilm/1": plan_manifest(False)}, {"minilm/1": {"spec": {"target": "onnx"}}}],
    ids=["empty", "plan-of-one-version", "onnx"],
)
def test_entry_point_keeps_host_code_refused_without_such_plan(
    tmp_path: Path, manifests: dict[str, dict]
) -> None:
    """The flag lets plans run host code: only a repository that needs it gets it."""
    from tritonize.engine.compat import TRITON_VERSION_COMPATIBLE_FLAG

    calls = run_entry_point(tmp_path, manifests)
    assert calls["check"]["flag"] is None
    assert TRITON_VERSION_COMPATIBLE_FLAG not in tritonserver_arguments(calls["serve"]["argv"])


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2) or "", match.group(3) or ""
        value = env.get(name)
        if operator == ":?" and not value:
            raise ValueError(f"required variable {name} is missing a value: {argument}")
        if operator == ":-" and not value:
            return argument
        return value or ""

    pattern = r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}"
    return re.sub(pattern, substitute, text.replace("$$", "\0")).replace("\0", "$")


SECRETS = {"TRITONIZE_API_KEY": "k3y", "GRAFANA_ADMIN_PASSWORD": "pa55", "TRITON_VERSION": "24.10"}


@pytest.mark.parametrize("missing", ["TRITONIZE_API_KEY", "GRAFANA_ADMIN_PASSWORD"])
@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_compose_refuses_to_start_without_a_secret(missing: str, value: str | None) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    if value is not None:
        env[missing] = value
    with pytest.raises(ValueError, match=f"required variable {missing} is missing a value"):
        interpolate(COMPOSE.read_text(), env)


def test_compose_passes_the_secrets_on() -> None:
    services = yaml.safe_load(interpolate(COMPOSE.read_text(), SECRETS))["services"]
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "pa55"
    assert services["triton"]["environment"]["TRITONIZE_API_KEY"] == "k3y"


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


EXAMPLE = ROOT / "model_repository"


@pytest.fixture(scope="module")
def default_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository that the default build (the README's first command) writes."""
    from tritonize.cli import main

    output = tmp_path_factory.mktemp("default") / "model_repository"
    assert main(["build", "--task", "embedding", "--name", "minilm", "--output", str(output)]) == 0
    return output


def test_the_example_repository_is_what_the_default_build_writes(default_build: Path) -> None:
    built = {
        p.relative_to(default_build): p.read_text() for p in default_build.glob("*/config.pbtxt")
    }
    tracked = {p.relative_to(EXAMPLE): p.read_text() for p in EXAMPLE.glob("*/config.pbtxt")}
    assert sorted(tracked) == sorted(built)
    for path, text in built.items():
        assert tracked[path] == text, f"model_repository/{path} differs from what build writes"


def ignored(paths: list[str]) -> set[str]:
    result = subprocess.run(["git", "check-ignore", "--stdin"], input="\n".join(paths),
                            cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert result.returncode in (0, 1), result.stderr  # 1: none ignored
    return set(result.stdout.split())


def test_git_keeps_only_the_examples_of_a_build_into_model_repository(default_build: Path) -> None:
    """Weights, manifests, version directories and staging of a real build stay out of git, and
    so does the public model's state: the link to the serving build and its history."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    written = [f"model_repository/{p.relative_to(default_build)}" for p in default_build.rglob("*")
               if p.is_file() or p.is_symlink()]  # fmt: skip
    examples = {path for path in written if path.endswith("/config.pbtxt")}
    leftovers = [".model_repository.staging-1x2y/journal.json", "model_repository/.triton.log"]
    pointer = {f"model_repository/minilm/{name}" for name in ("1", HISTORY, GOLDEN)}
    assert len(examples) == 4 and len(written) > 10 and pointer <= set(written)
    assert ignored(written + leftovers) == set(written + leftovers) - examples
    assert not ignored(["model_repository/README.md"])
