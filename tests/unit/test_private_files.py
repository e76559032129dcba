"""What `serve` puts in the shared temp dir: owner-checked, never a planted file or symlink."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tritonize.errors import ServerError
from tritonize.server import ServerConfig
from tritonize.server.bundled import BundledTriton
from tritonize.server.leftovers import _parse_stub, remove_orphans, shm_regions
from tritonize.server.local import Launch, LocalServer
from tritonize.server.private import ensure_private_dir, open_log, private_root
from tritonize.server.supervisor import Backoff

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp dir of the test's own, standing for the shared /tmp."""
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    return shared


def test_the_private_dir_is_made_for_this_user_alone(private_tmp: Path) -> None:
    root = ensure_private_dir(private_root())
    assert root == private_tmp / f"tritonize-{os.getuid()}"
    assert (root.stat().st_mode & 0o777, root.stat().st_uid) == (0o700, os.getuid())
    assert ensure_private_dir(root) == root  # and accepted as it is next time


def test_a_planted_symlink_is_refused(private_tmp: Path) -> None:
    elsewhere = private_tmp / "attacker"
    elsewhere.mkdir(mode=0o700)
    private_root().symlink_to(elsewhere)
    with pytest.raises(ServerError, match="is a symlink"):
        ensure_private_dir(private_root())


@as_root
def test_a_dir_owned_by_another_user_is_refused() -> None:
    private_root().mkdir(mode=0o700)
    os.chown(private_root(), NOBODY, NOBODY)
    with pytest.raises(ServerError, match=f"belongs to uid {NOBODY}, not to this user"):
        ensure_private_dir(private_root())


def test_a_dir_open_to_others_is_refused() -> None:
    private_root().mkdir()
    private_root().chmod(0o777)
    with pytest.raises(ServerError, match="open to other users .mode 777, allowed 700"):
        ensure_private_dir(private_root())


def test_the_default_log_is_private_and_never_follows_a_symlink(tmp_path: Path) -> None:
    config = ServerConfig(tmp_path, http_port=18123)
    assert config.log_path == private_root() / "tritonserver-18123.log"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    ensure_private_dir(private_root())
    config.log_path.symlink_to(victim)
    with pytest.raises(ServerError, match="cannot open the server log .*: it is a symlink"):
        LocalServer(config).launch()
    assert victim.read_text() == "precious"
    assert [p.name for p in private_root().iterdir()] == [config.log_path.name]  # no copy left


def test_an_explicit_log_never_follows_a_symlink(tmp_path: Path) -> None:
    victim, planted = tmp_path / "victim", tmp_path / "server.log"
    victim.write_text("precious")
    planted.symlink_to(victim)
    with pytest.raises(ServerError, match="it is a symlink"):
        open_log(planted)
    assert victim.read_text() == "precious"


def test_each_start_gets_a_fresh_backend_copy_and_ignores_planted_ones(private_tmp: Path) -> None:
    bundled = BundledTriton.find()
    stub = bundled.backend_files()[-1]
    planted = private_tmp / "tritonize-backends" / "0" / "python" / stub.name  # the old place
    planted.parent.mkdir(parents=True)
    planted.write_text("#!/bin/sh\ntouch /tmp/pwned\n")
    first, second = Launch.prepare(None), Launch.prepare(None)
    assert first.backends is not None and second.backends is not None
    assert first.backends != second.backends
    for launch in (first, second):
        assert launch.backends.parent == private_root()
        assert launch.backends.stat().st_mode & 0o777 == 0o700
        assert (launch.backends / "python" / stub.name).read_bytes() == stub.read_bytes()
        assert f"--backend-directory={launch.backends}" in ServerConfig(Path(".")).arguments(
            launch.binary, launch.backends, "p_"
        )


def test_a_start_refuses_a_planted_private_dir(private_tmp: Path) -> None:
    elsewhere = private_tmp / "attacker"
    elsewhere.mkdir()
    private_root().symlink_to(elsewhere)
    with pytest.raises(ServerError, match="is a symlink"):
        Launch.prepare(None)
    assert list(elsewhere.iterdir()) == []


def test_a_non_bundled_binary_runs_with_its_own_backends(tmp_path: Path) -> None:
    binary = tmp_path / "tritonserver"
    binary.write_text("")
    binary.chmod(0o755)
    launch = Launch.prepare(binary)
    assert (launch.binary, launch.backends) == (binary, None)
    args = ServerConfig(tmp_path).arguments(launch.binary, launch.backends, "tritonize_1_ab_")
    assert not [a for a in args if a.startswith("--backend-directory")]
    assert "--backend-config=python,shm-region-prefix-name=tritonize_1_ab_" in args
    (tmp_path / "not-executable").write_text("")
    for unusable in (tmp_path / "missing", tmp_path, tmp_path / "not-executable"):
        with pytest.raises(ServerError, match="--tritonserver .*: not an executable file"):
            Launch.prepare(unusable)


def test_the_key_guards_every_admin_api_on_both_protocols(tmp_path: Path) -> None:
    args = ServerConfig(tmp_path, api_key="k").arguments(Path("b"), None, "p_")
    expected = "shared-memory,model-repository,statistics,trace,logging:tritonize-key=k"
    assert f"--http-restricted-api={expected}" in args
    assert f"--grpc-restricted-protocol={expected}" in args
    assert ServerConfig(tmp_path).api_key != ServerConfig(tmp_path).api_key  # random per start


def test_a_generated_key_can_follow_a_command_line_flag(tmp_path: Path) -> None:
    # A key starting with "-" reads as an option: `tritonize health --api-key -x` fails.
    keys = [ServerConfig(tmp_path).api_key for _ in range(2000)]
    assert not [key for key in keys if key.startswith("-")]
    assert min(len(key) for key in keys) >= 32


def test_a_stub_is_known_by_its_command_line() -> None:
    argv = ["/x/python/triton_python_backend_stub", "/repo/minilm_tokenizer.v1/1/model.py",
            "tritonize_12_ab_f00", "1048576", "1048576", "7", "/x/python", "336",
            "minilm_tokenizer.v1_0_0", "DEFAULT"]  # fmt: skip
    stub = _parse_stub(99, argv)
    assert stub is not None
    assert (stub.model, stub.instance, stub.region) == (
        "minilm_tokenizer.v1",
        "minilm_tokenizer.v1_0_0",
        "tritonize_12_ab_f00",
    )
    assert _parse_stub(99, ["/usr/bin/python3", *argv[1:]]) is None


def test_regions_of_a_dead_owner_are_removed_and_a_live_owners_kept() -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    dead, live = f"tritonize_{finished.stdout.strip()}_0f_", f"tritonize_{os.getpid()}_0f_"
    for prefix in (dead, live):
        (Path("/dev/shm") / f"{prefix}region").write_bytes(b"x")
    try:
        removed = remove_orphans()
        assert removed[1] >= 1
        assert shm_regions(dead) == []
        assert [p.name for p in shm_regions(live)] == [f"{live}region"]
    finally:
        for prefix in (dead, live):
            (Path("/dev/shm") / f"{prefix}region").unlink(missing_ok=True)


def test_restarts_back_off_and_start_over_after_a_good_run() -> None:
    backoff = Backoff()
    assert [backoff.delay(uptime_s=0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(uptime_s=600) == 1
    assert backoff.delay(uptime_s=0) == 2


def test_backend_copies_of_a_killed_owner_are_removed_at_the_next_start() -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    root = ensure_private_dir(private_root())
    orphan = root / f"backends-{finished.stdout.strip()}-abc"
    own = root / f"backends-{os.getpid()}-def"
    for copy in (orphan, own):
        (copy / "python").mkdir(parents=True)
    launch = Launch.prepare(None)
    assert not orphan.exists()
    assert own.exists() and launch.backends is not None and launch.backends.exists()
