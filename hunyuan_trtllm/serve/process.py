"""Run a server process in its own process group: wait until it is ready, stop it cleanly, leave no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from hunyuan_trtllm.errors import UserError

GROUP_EXIT_S = 10.0


def start_process_group(command: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` as the leader of a new process group (so stopping it reaches every child)."""
    try:
        return subprocess.Popen(list(command), env=env, start_new_session=True)
    except FileNotFoundError:
        raise UserError(f"{command[0]}: not found on PATH") from None


def wait_ready(process: subprocess.Popen, url: str, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early if the process exits, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"the server exited with code {process.returncode} before it was ready ({url})")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    stop_process_group(process)
    raise UserError(f"the server was not ready at {url} within {timeout:.0f} s")


def stop_process_group(process: subprocess.Popen, grace: float = 30.0) -> int:
    """SIGINT the group (servers drain in-flight requests), then SIGTERM, then SIGKILL; returns the exit code."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # children that outlived the leader
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    code = process.wait()
    deadline = time.monotonic() + GROUP_EXIT_S
    while time.monotonic() < deadline and _group_alive(process.pid):  # killed children take a moment to go
        time.sleep(0.05)
    return code


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
