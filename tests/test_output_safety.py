"""Never lose a user's data (issue 10): --overwrite never deletes an input or a directory that is not ours,
conversions into one directory are locked (two real processes), a resume checks the source, workers die with
their parent, a full disk is refused up front and cleaned up after."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from hunyuan_trtllm.checkpoints import rank_tasks
from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.file_io import FileWriter
from hunyuan_trtllm.checkpoints.mapping import Mapping
from hunyuan_trtllm.checkpoints.source import open_source
from hunyuan_trtllm.cli import cli
from hunyuan_trtllm.errors import UserError
from tests.test_convert_errors import assert_one_line_error

PLAN = Path(__file__).parent / "fixtures" / "deploy" / "a13b-fp8-h100x8.plan.json"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> Path:
    """A models/ folder: a copy of the tiny dense model and an unrelated sibling file."""
    base = tmp_path_factory.mktemp("models") / "models"
    shutil.copytree(tiny_models["dense"], base / "dense")
    (base / "notes.txt").write_text("not ours")
    return base


# ---- 1. data loss ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("out", "fragment"), [
    ("models/dense", "is the input"),
    ("models", "contains the input"),
    ("models/dense/trtllm", "is inside the input"),
])
def test_convert_overwrite_never_deletes_an_input(models, out, fragment):
    before = snapshot(models)
    target = models.parent / out
    result = run("convert", models / "dense", "-o", target, "--overwrite")
    assert_one_line_error(result, fragment)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1  # not even an empty progress bar
    assert snapshot(models) == before


def test_triton_repo_overwrite_never_replaces_its_checkpoint(tiny):
    before = snapshot(tiny["ckpt"])
    assert_one_line_error(run("triton-repo", tiny["ckpt"], "-o", tiny["ckpt"], "--overwrite", "--flavor",
                              "reference", "--tokenizer", tiny["src"]), "is the input")
    assert_one_line_error(run("triton-repo", tiny["ckpt"], "-o", tiny["ckpt"].parent, "--overwrite", "--flavor",
                              "reference", "--tokenizer", tiny["src"]), "contains the input")
    assert snapshot(tiny["ckpt"]) == before


@pytest.mark.parametrize("command", ["convert", "triton-repo", "deploy"])
def test_overwrite_refuses_a_directory_that_is_not_ours(tmp_path, tiny, command):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    (precious / "config.json").write_text("{}")
    args = {"convert": ["convert", tiny["src"], "-o", precious, "--tp", "2", "--ep", "2", "--quiet"],
            "triton-repo": ["triton-repo", tiny["ckpt"], "-o", precious, "--flavor", "reference", "--tokenizer",
                            tiny["src"]],
            "deploy": ["deploy", "k8s", PLAN, "-o", precious]}[command]
    assert_one_line_error(run(*args, "--overwrite"), "--overwrite replaces only", "nothing was deleted")
    assert snapshot(precious) == {"thesis.tex": b"years of work", "config.json": b"{}"}


def test_convert_overwrite_replaces_only_its_own_files(tiny_models, tmp_path):
    out = tmp_path / "out"
    assert run("convert", tiny_models["dense"], "-o", out, "--tp", "2", "--quiet").exit_code == 0
    (out / "README.txt").write_text("mine")
    (out / "tokenizer").mkdir()
    assert run("convert", tiny_models["dense"], "-o", out, "--tp", "1", "--overwrite", "--quiet").exit_code == 0
    assert (out / "README.txt").read_text() == "mine" and (out / "tokenizer").is_dir()
    assert sorted(p.name for p in out.glob("rank*")) == ["rank0.safetensors"]


def test_deploy_overwrite_refuses_an_output_holding_its_plan(tmp_path):
    plan = tmp_path / "plan.json"
    shutil.copy(PLAN, plan)
    assert_one_line_error(run("deploy", "k8s", plan, "-o", tmp_path, "--overwrite"), "contains the input")
    assert plan.read_bytes() == PLAN.read_bytes()


# ---- 2. concurrent conversions and resumes ----------------------------------------------------------------

# Runs the CLI with every tensor write held while HOLD exists (workers import this file as __mp_main__, so they
# are held too); each held process touches HOLD.<pid> so the test knows it got that far.
RUNNER = textwrap.dedent("""
    import os, sys, time
    import hunyuan_trtllm.checkpoints.file_io as file_io
    _write = file_io.FileWriter.write
    def held(*args):
        hold = os.environ["HOLD"]
        if os.path.exists(hold):
            open(f"{hold}.{os.getpid()}", "w").close()
        deadline = time.monotonic() + 120
        while os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.02)
        return _write(*args)
    file_io.FileWriter.write = held
    if __name__ == "__main__":
        from hunyuan_trtllm.cli import main
        sys.argv[0] = "hunyuan-trtllm"
        main()
""")


@pytest.fixture
def held(tmp_path):
    runner, hold = tmp_path / "runner.py", tmp_path / "hold"
    runner.write_text(RUNNER)
    hold.touch()
    env = {**os.environ, "HOLD": str(hold), "PYTHONPATH": os.pathsep.join(sys.path)}

    def start(*args) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(runner), *map(str, args)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_for(count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(list(tmp_path.glob("hold.*"))) < count:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the held conversion never started writing"
            time.sleep(0.05)

    start.hold, start.wait_for = hold, wait_for  # type: ignore[attr-defined]
    return start


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def test_second_conversion_into_a_busy_directory_refuses_and_the_first_is_intact(tiny_models, tmp_path, held):
    out = tmp_path / "out"
    first = held("convert", tiny_models["dense"], "-o", out, "--tp", "2", "--quiet")
    held.wait_for(1, first)  # the first process is writing rank 0
    second = subprocess.run([sys.executable, "-m", "hunyuan_trtllm", "convert", tiny_models["dense"], "-o", out,
                             "--tp", "2", "--quiet"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert lines[0].startswith("error: ") and "another conversion is writing rank 0" in lines[0]
    assert not (out / "config.json").exists()
    held.hold.unlink()
    assert finish(first) == (0, "")
    fresh = tmp_path / "fresh"
    convert(tiny_models["dense"], fresh, Mapping(tp=2))
    for rank in (0, 1):  # no zeroed or mixed rank file
        assert (out / f"rank{rank}.safetensors").read_bytes() == (fresh / f"rank{rank}.safetensors").read_bytes()


def test_split_ranks_still_convert_side_by_side(tiny_models, tmp_path, held):
    out = tmp_path / "out"
    first = held("convert", tiny_models["dense"], "-o", out, "--tp", "2", "--ranks", "0", "--quiet")
    held.wait_for(1, first)
    other = run("convert", tiny_models["dense"], "-o", out, "--tp", "2", "--ranks", "1", "--quiet", "--json")
    assert other.exit_code == 0, other.output
    assert json.loads(other.stdout)["complete"] is False  # rank 0 is still being written
    held.hold.unlink()
    assert finish(first) == (0, "")
    assert (out / "config.json").is_file() and json.loads((out / "manifest.json").read_text())["complete"]


def resaved(src: Path, dest: Path, scale: float) -> Path:
    """``src`` with every weight scaled, written by safetensors itself: same shapes, same header bytes."""
    shutil.copytree(src, dest)
    tensors = load_file(dest / "model.safetensors")
    save_file({k: v * scale for k, v in tensors.items()}, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def test_resume_refuses_a_different_model_with_the_same_shapes(tiny_models, tmp_path, monkeypatch):
    one = resaved(tiny_models["dense"], tmp_path / "one", 1.0)
    two = resaved(tiny_models["dense"], tmp_path / "two", 1.5)
    headers = [e["header_sha256"] for m in (one, two) for e in open_source(m).fingerprint() if "header_sha256" in e]
    assert headers[0] == headers[1]  # only the weights differ
    out = tmp_path / "out"
    calls = {"n": 0}
    real = rank_tasks.materialize

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rank_tasks, "materialize", crash)
    with pytest.raises(KeyboardInterrupt):
        convert(one, out, Mapping(tp=1), dtype="float32")
    monkeypatch.setattr(rank_tasks, "materialize", real)
    with pytest.raises(UserError, match=r"different model \(.*model.safetensors differs"):
        convert(two, out, Mapping(tp=1), dtype="float32")
    assert convert(one, out, Mapping(tp=1), dtype="float32").complete  # the same model resumes


# ---- 3. runaway work ------------------------------------------------------------------------------------------


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_their_parent(tiny_models, tmp_path, held, sig):
    parent = held("convert", tiny_models["a13b"], "-o", tmp_path / "out", "--tp", "2", "--ep", "2", "--workers",
                  "2", "--quiet")
    held.wait_for(2, parent)  # both workers are inside a task
    children = psutil.Process(parent.pid).children(recursive=True)
    assert len(children) == 3 and any("resource_tracker" in " ".join(c.cmdline()) for c in children)
    os.kill(parent.pid, sig)
    parent.communicate(timeout=60)
    deadline = time.monotonic() + 20
    while not all(gone(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [c.pid for c in children if not gone(c)] == []  # workers and the resource tracker


# ---- 4. disk full -------------------------------------------------------------------------------------------


def test_free_space_is_checked_before_anything_is_written(tiny_models, tmp_path, monkeypatch):
    real = os.statvfs

    class Tiny:
        def __init__(self, path):
            self.f_frsize, self.f_bavail = 4096, 100  # 400 KiB free

    monkeypatch.setattr(os, "statvfs", lambda p: Tiny(p) if str(p).endswith("/out") else real(p))
    out = tmp_path / "out"
    assert_one_line_error(run("convert", tiny_models["a13b"], "-o", out, "--tp", "2", "--ep", "2"),
                          "not enough free disk space", "MiB needed", "400.0 KiB free")
    assert not out.exists()


def test_disk_full_mid_write_cleans_up_and_says_how_much_is_needed(tiny_models, tmp_path, monkeypatch):
    writes = {"n": 0}
    real = FileWriter.write

    def fill_up(self, offset, tensor):
        writes["n"] += 1
        if writes["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(self, offset, tensor)

    monkeypatch.setattr(FileWriter, "write", fill_up)
    out = tmp_path / "out"
    assert_one_line_error(run("convert", tiny_models["a13b"], "-o", out, "--tp", "2", "--ep", "2", "--quiet"),
                          "disk full", "MiB free", "run the same command to resume")
    assert not out.exists()  # nothing was finished: no partial file, no manifest, not even the directory


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'mount failed'}); "
                    "test_disk_full_mid_write_* covers the same path with a simulated ENOSPC")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_real_enospc_on_a_small_tmpfs(tiny_models, small_tmpfs, held):
    out = small_tmpfs / "out"
    proc = held("convert", tiny_models["a13b"], "-o", out, "--tp", "2", "--ep", "2", "--quiet")
    held.wait_for(1, proc)
    filler = small_tmpfs / "filler"
    with filler.open("wb") as f:  # someone else fills the disk while we convert
        try:
            while True:
                f.write(bytes(1 << 20))
                f.flush()
        except OSError:
            pass
    held.hold.unlink()
    code, err = finish(proc)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "disk full" in lines[0], err
    assert not out.exists() or not [p.name for p in out.iterdir() if not p.name.startswith(".hunyuan")]
    filler.unlink()


def test_disk_full_in_other_commands_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from hunyuan_trtllm.synth import checkpoint as synth

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(synth, "write_atomic", full)
    assert_one_line_error(run("synth", "--arch", "dense", "-o", tmp_path / "out"), ".out.synth-", "disk full")
    assert list(tmp_path.iterdir()) == []  # the half-built folder beside it is gone too
