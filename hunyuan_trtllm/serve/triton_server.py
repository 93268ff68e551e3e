"""Run the ``tritonserver`` binary bundled in ``nvidia-pytriton`` (Triton 2.51) on a model repository, on CPU.

Setup, as pytriton does it (/work/shared/reference/triton.md section 10): a private backends directory holding
the Python backend and the stub built for the running interpreter's ``major.minor``;
``LD_LIBRARY_PATH=<site-packages>/nvidia_pytriton.libs`` (the copied stub cannot find its libraries otherwise);
``sys.exec_prefix/bin`` first on ``PATH`` (so the stub's interpreter finds this environment's packages). One
addition: the directory of this interpreter's own ``libpython`` goes first on ``LD_LIBRARY_PATH``. The stub links
``libpython3.X.so.1.0`` by name, and another build of it (a distribution's, next to a pyenv or conda Python) has
its own frozen ``site`` module that looks for ``dist-packages`` and never finds this environment's packages. The
stub's interpreter runs isolated (``PYTHONPATH`` is ignored).
The server listens on 127.0.0.1 only (HTTP, gRPC, metrics; free ports unless given), runs in its own process
group with a parent-death signal, and is stopped with SIGINT, then SIGTERM, then SIGKILL of the whole group.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.serve.process import stop_process_group

INSTALL_HINT = "pip install nvidia-pytriton==0.7.0"
HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1
LOG_TAIL_LINES = 40
POLL_S = 0.25


class TritonServerError(UserError):
    """The server did not start, or died; the message ends with its last log lines."""


@dataclass(frozen=True)
class TritonInstall:
    """The pieces of pytriton's bundled Triton that a server needs."""

    binary: Path
    backend_dir: Path  # libtriton_python.so + triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this Python
    libs: Path  # the bundled shared libraries


def find_triton() -> TritonInstall:
    """Locate the bundled Triton; :class:`UserError` when nvidia-pytriton is missing or lacks a stub for us."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise UserError(f"nvidia-pytriton is not installed; the Triton server needs it ({INSTALL_HINT})")
    root = Path(spec.origin).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    libs = root.parents[1] / "nvidia_pytriton.libs"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        backend_dir=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=libs if libs.is_dir() else root / "external_libs",
    )
    missing = [str(p) for p in (install.binary, install.backend_dir, install.stub, install.libs) if not p.exists()]
    if missing:
        raise UserError(f"nvidia-pytriton is incomplete for Python {version} (missing {', '.join(missing)}); "
                        f"reinstall it ({INSTALL_HINT})")
    return install


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def prepare_backends(install: TritonInstall, dest: Path) -> Path:
    """``dest/python`` with the Python backend and this interpreter's stub; returns ``dest``."""
    python = dest / "python"
    python.mkdir(parents=True)
    for item in install.backend_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, python / item.name)
    shutil.copy2(install.stub, python / install.stub.name)
    return dest


def libpython_dir() -> str | None:
    """The directory of this interpreter's shared ``libpython`` (None for a static build)."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    return libdir if libdir and soname and (Path(libdir) / soname).is_file() else None


def server_env(install: TritonInstall, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the bundled libraries and this environment's ``bin`` first."""
    env = dict(os.environ)
    search = (libpython_dir(), str(install.libs), env.get("LD_LIBRARY_PATH"))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in search if p)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.exec_prefix) / "bin"), env.get("PATH")) if p)
    env.update(extra or {})
    return env


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class TritonServer:
    """A running ``tritonserver`` for ``repo``; use as a context manager (``with TritonServer(repo) as s:``)."""

    def __init__(self, repo: Path, http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0, *,
                 ready_timeout: float = 120.0, stop_timeout: float = 20.0, log_verbose: int = 0,
                 env: Mapping[str, str] | None = None) -> None:
        """Ports 0 are chosen free at :meth:`start`; ``env`` adds variables to the server's environment."""
        self.repo = Path(repo).resolve()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.ready_timeout, self.stop_timeout = ready_timeout, stop_timeout
        self.log_verbose = log_verbose
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen | None = None
        self.workspace: Path | None = None
        self.logs = ""  # the whole log, kept when the server stops
        self.shm_prefix = f"hytriton{os.getpid()}-{uuid.uuid4().hex[:8]}-"

    @property
    def url(self) -> str:
        """The HTTP endpoint, e.g. ``http://127.0.0.1:8000``."""
        return f"http://{HOST}:{self.http_port}"

    @property
    def log_file(self) -> Path:
        if self.workspace is None:
            raise RuntimeError("the server has not been started")
        return self.workspace / "tritonserver.log"

    def command(self, install: TritonInstall, backends: Path) -> list[str]:
        """The tritonserver command line."""
        return [
            str(install.binary), f"--model-repository={self.repo}", f"--backend-directory={backends}",
            f"--http-address={HOST}", f"--http-port={self.http_port}",
            f"--grpc-address={HOST}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={HOST}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false", "--disable-auto-complete-config",
            f"--exit-timeout-secs={max(1, int(self.stop_timeout))}", f"--log-verbose={self.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]

    def start(self) -> TritonServer:
        """Start the server and wait until ``/v2/health/ready``; :class:`TritonServerError` otherwise."""
        if self.process is not None:
            raise RuntimeError("the server is already running")
        install = find_triton()
        if not self.repo.is_dir():
            raise UserError(f"{self.repo}: model repository does not exist")
        self.workspace = Path(tempfile.mkdtemp(prefix="hy-triton-"))
        backends = prepare_backends(install, self.workspace / "backends")
        self.http_port, self.grpc_port, self.metrics_port = (
            port or free_port() for port in (self.http_port, self.grpc_port, self.metrics_port))
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(
                self.command(install, backends), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=server_env(install, self.extra_env), start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise TritonServerError(f"tritonserver exited with code {self.process.returncode} before it was "
                                        f"ready:\n{self.failure_log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(POLL_S)
        raise TritonServerError(f"tritonserver was not ready within {self.ready_timeout:.0f} s:\n{self.failure_log()}")

    def failure_log(self) -> str:
        """What says why the server did not come up: its error lines (glog ``E`` lines, which a slow unload of the
        other models can push out of the tail), then the last :data:`LOG_TAIL_LINES` lines."""
        tail = self.log_tail()
        errors = [line for line in self.log_tail(10_000).splitlines()
                  if line[:1] == "E" and line[1:5].isdigit() and line not in tail]
        return "\n".join([*errors[-LOG_TAIL_LINES:], tail])

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except (OSError, RuntimeError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """Stop the server and every process of its group; remove its workspace and shared memory."""
        code = None
        if self.process is not None:
            code = stop_process_group(self.process, grace=self.stop_timeout)
            self.process = None
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)
        if self.workspace is not None:
            self.logs = self.log_tail(10_000)
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
