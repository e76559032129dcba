"""Guards for what otherwise only a Docker host finds: every Dockerfile linted (hadolint), every
shell script checked (shellcheck), and every image's Python requirements resolved for that
image's Python and platform without installing anything (a pip dry run), so that a pin no wheel
matches fails here instead of in `docker compose build`.

The resolution needs the package index; without it those tests skip and say so.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tritonize.engine.compat import library_version

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
SCRIPTS = sorted([*(ROOT / "scripts").glob("*.sh"), *(ROOT / "docker").glob("*.sh")])
NVIDIA_INDEX = "https://pypi.nvidia.com"


@dataclass(frozen=True)
class NgcRelease:
    """What NVIDIA's `tritonserver` and `tensorrt` images of one release hold (NGC release
    notes): both are Ubuntu 24.04 with its Python and glibc."""

    python: str
    glibc: int  # 2.<glibc>
    tensorrt: str  # libnvinfer's four-part version
    cuda_major: int


NGC_RELEASES = {"25.08": NgcRelease(python="3.12", glibc=39, tensorrt="10.13.2.6", cuda_major=13)}


@dataclass(frozen=True)
class Image:
    """A Dockerfile's base, the Python and glibc it brings, and what it pip-installs."""

    base: str  # the FROM line's image, as written
    extras: tuple[str, ...]  # of pyproject.toml, on top of the core dependencies
    python: str = ""  # "": the NGC release's
    glibc: int = 0


IMAGES = {
    "build.Dockerfile": Image("nvcr.io/nvidia/tensorrt:${TRITON_VERSION}-py3", ("export",)),
    "triton.Dockerfile": Image("nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3", ()),
    "locust.Dockerfile": Image("python:3.11-slim-bookworm", ("loadtest",), "3.11", 36),
}


def tool(name: str) -> str:
    """A linter of the `dev` extra: beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"`{name}` is not installed (pip install -e '.[dev]')")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_passes_shellcheck(script: Path) -> None:
    result = subprocess.run(
        [tool("shellcheck"), "--external-sources", str(script)],
        capture_output=True, text=True, timeout=60, cwd=script.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def ngc_release() -> tuple[str, NgcRelease]:
    env = (ROOT / ".env").read_text()
    (version,) = re.findall(r"^TRITON_VERSION=(\S+)", env, re.MULTILINE)
    assert version in NGC_RELEASES, f"describe NGC release {version} in NGC_RELEASES"
    return version, NGC_RELEASES[version]


def test_every_image_is_described_with_its_base() -> None:
    assert sorted(IMAGES) == [p.name for p in DOCKERFILES]
    for name, image in IMAGES.items():
        bases = re.findall(r"^FROM\s+(\S+)", (ROOT / "docker" / name).read_text(), re.MULTILINE)
        assert bases == [image.base], f"{name}: update IMAGES (Python, glibc) with its base"
    ngc_release()


# -- requirements, resolved per image -----------------------------------------------------------
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(extras: tuple[str, ...]) -> list[str]:
    """The core dependencies and `extras`, with `tritonize[...]` references expanded."""
    project = pyproject()
    wanted, seen, out = list(extras), set(), list(project["dependencies"])
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in project["optional-dependencies"][extra]:
            nested = re.fullmatch(r"tritonize\[(.+)\]", requirement)
            if nested:
                wanted += nested.group(1).split(",")
            else:
                out.append(requirement)
    return out


def pip(*args: str, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout,
        env=env,
    )  # fmt: skip


@functools.cache
def index_unreachable() -> str | None:
    result = pip("index", "versions", "pip", "--timeout", "15", "--retries", "1", timeout=60)
    return None if result.returncode == 0 else f"the package index is unreachable: {result.stderr}"


def resolve(python: str, glibc: int, packages: list[str], *index: str) -> None:
    """A pip dry run for CPython `python` on manylinux x86_64 up to glibc 2.`glibc`, wheels
    only (an image without a compiler builds nothing)."""
    if reason := index_unreachable():
        pytest.skip(reason)
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(glibc, 4, -1)]
    tags += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]  # old names
    platforms = [f"--platform={tag}" for tag in tags]
    result = pip(
        "install", "--dry-run", "--ignore-installed", "--quiet", "--only-binary=:all:",
        f"--python-version={python}", *platforms, *index, *packages,
    )  # fmt: skip
    assert result.returncode == 0, f"Python {python}: {packages}\n{result.stderr[-3000:]}"


@pytest.mark.network
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_requirements_resolve_for_its_python(name: str) -> None:
    image = IMAGES[name]
    _, release = ngc_release()
    packages = requirements(image.extras)
    if name == "triton.Dockerfile":
        packages.append(dockerfile_torch_pin())  # the TensorRT wheel: see the next tests
    resolve(image.python or release.python, image.glibc or release.glibc, packages)


def dockerfile_torch_pin() -> str:
    (pin,) = re.findall(r'"(torch==[^"]+)"', (ROOT / "docker" / "triton.Dockerfile").read_text())
    return pin


def test_torch_is_pinned_alike_in_the_triton_image_and_pyproject() -> None:
    assert dockerfile_torch_pin() in pyproject()["optional-dependencies"]["export"]


def tensorrt_requirement(release: NgcRelease) -> str:
    """What docker/triton.Dockerfile installs: the package of the image's libnvinfer version,
    as `runtime_tensorrt_version` reads it there."""

    class Libnvinfer:
        def __init__(self, version: str) -> None:
            for name, part in zip(
                ("Major", "Minor", "Patch", "Build"), version.split("."), strict=True
            ):
                setattr(self, f"getInferLib{name}Version", functools.partial(int, part))

    dockerfile = (ROOT / "docker" / "triton.Dockerfile").read_text()
    assert "runtime_tensorrt_version" in dockerfile
    assert '"tensorrt-cu${CUDA_VERSION%%.*}==${version}"' in dockerfile
    return f"tensorrt-cu{release.cuda_major}=={library_version(Libnvinfer(release.tensorrt))}"


@pytest.mark.network
def test_the_triton_images_tensorrt_pin_is_published() -> None:
    """A three-part pin (`==10.13.2`) matches no release: TensorRT publishes four parts."""
    if reason := index_unreachable():
        pytest.skip(reason)
    _, release = ngc_release()
    name, version = tensorrt_requirement(release).split("==")
    listed = pip("index", "versions", name, f"--python-version={release.python}")
    assert listed.returncode == 0, listed.stderr
    published = re.search(r"Available versions: (.*)", listed.stdout)
    assert published and version in published.group(1).split(", "), listed.stdout


@pytest.mark.network
def test_the_triton_images_tensorrt_wheels_resolve_on_nvidias_index() -> None:
    """PyPI's `tensorrt-cu13` releases are stubs that fetch wheels from NVIDIA's index at
    install time; resolve them there, where that index can be reached."""
    check = subprocess.run(
        ["curl", "-sSf", "-m", "10", "-o", os.devnull, f"{NVIDIA_INDEX}/"],
        capture_output=True, text=True,
    )  # fmt: skip
    if check.returncode != 0:
        pytest.skip(f"{NVIDIA_INDEX} is unreachable: {check.stderr.strip()}")
    _, release = ngc_release()
    resolve(release.python, release.glibc, [tensorrt_requirement(release)],
            f"--extra-index-url={NVIDIA_INDEX}")  # fmt: skip


# -- the golden prober beside Triton ------------------------------------------------------------
def compose_services() -> dict:
    """docker-compose.yml's services, every `${NAME:-default}` at its default."""
    import yaml

    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", (ROOT / "docker-compose.yml").read_text())
    return yaml.safe_load(text)["services"]


def test_the_probe_service_runs_tritonize_from_the_triton_image() -> None:
    services = compose_services()
    probe, triton = services["probe"], services["triton"]
    assert probe["image"] == triton["image"] and triton["build"]["dockerfile"] == (
        "docker/triton.Dockerfile"
    )
    assert "pip install /opt/tritonize" in (ROOT / "docker" / "triton.Dockerfile").read_text()
    assert probe["entrypoint"] == ["tritonize", "probe"]
    assert probe["profiles"] == services["prometheus"]["profiles"]  # beside what scrapes it
    assert "ports" not in probe  # reached by Prometheus on the compose network only
    assert probe["depends_on"]["triton"]["condition"] == "service_healthy"


def test_the_probe_command_parses_and_prometheus_scrapes_it() -> None:
    """The compose command through the real CLI parser: Triton's HTTP port, the golden file of
    the mounted repository, and the metrics port that prometheus.yml's `probe` job scrapes."""
    import yaml

    from tritonize.cli import _parser

    probe = compose_services()["probe"]
    args = _parser().parse_args(["probe", *probe["command"]])
    (mount,) = probe["volumes"]
    host_dir, container_dir, _ = mount.split(":")
    assert host_dir == "./model_repository" and args.golden.is_relative_to(container_dir)
    assert args.golden.name == "golden.json" and args.golden.parent.name == args.model
    assert args.url == "triton:8000" and args.metrics_host == "0.0.0.0"
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["probe"]["static_configs"][0]["targets"] == [f"probe:{args.metrics_port}"]
