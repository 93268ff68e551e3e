"""Chat templates rendered in worker processes: bounded in time, output size and memory, off the event loop.

A checkpoint's Jinja template is code: sandboxed, but free to loop for minutes or build huge strings. The OpenAI
endpoint therefore renders it in a small pool of worker processes (``python -m
hunyuan_trtllm.serve.template_worker``), each limited to ``template_memory_bytes`` of address space beyond its
start and ``template_max_chars`` of output. A render that takes longer than ``template_timeout_s`` gets its
worker killed (a new one starts for the next request); a worker also arms a kernel alarm per job, so it cannot
outlive a runaway template even when the server is gone. Jobs and answers are length-prefixed JSON on the worker's
stdin / stdout.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from hunyuan_trtllm.checkpoints.chat_template import ChatTemplate, TemplateOutputTooLarge

_LENGTH = struct.Struct(">Q")
STARTUP_TIMEOUT_S = 60.0
_WORKER_ENDS = ("chat_template_memory",)  # answers after which the worker exits (not trusted after a MemoryError)


class TemplateRenderError(Exception):
    """A render that failed: ``status`` 400 (the request's fault) or 500 (the template's)."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _write(stream: BinaryIO, payload: Any) -> None:
    data = json.dumps(payload).encode("ascii")  # ASCII escapes carry lone surrogates too
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    buffer = bytearray()
    while len(buffer) < size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(size - len(buffer), 1 << 20))
        if not chunk:
            raise EOFError
        buffer += chunk
    return bytes(buffer)


def _read(fd: int, deadline: float | None = None) -> Any:
    (size,) = _LENGTH.unpack(_read_exact(fd, _LENGTH.size, deadline))
    return json.loads(_read_exact(fd, size, deadline))


class _Worker:
    """One worker process holding the compiled template."""

    def __init__(self, template: ChatTemplate, timeout_s: float, max_chars: int, memory_bytes: int) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen([sys.executable, "-m", "hunyuan_trtllm.serve.template_worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout.fileno()
        try:
            _write(self.stdin, {"source": template.source, "variables": template.variables, "max_chars": max_chars,
                                "memory_bytes": memory_bytes, "alarm_s": timeout_s + 2})
            _read(self.stdout, time.monotonic() + STARTUP_TIMEOUT_S)
        except (OSError, EOFError, TimeoutError, ValueError):
            self.kill()
            raise TemplateRenderError("the chat template worker did not start", 500, "chat_template_worker") from None

    def render(self, job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        _write(self.stdin, job)
        return _read(self.stdout, time.monotonic() + timeout_s)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.stdin.close()


class TemplateWorkers:
    """Renders a Jinja :class:`ChatTemplate` in up to ``size`` worker processes (blocking: call from a thread)."""

    def __init__(self, template: ChatTemplate, timeout_s: float, max_chars: int, memory_bytes: int,
                 size: int = 2) -> None:
        self.template, self.timeout_s = template, timeout_s
        self.max_chars, self.memory_bytes = max_chars, memory_bytes
        self._idle: queue.LifoQueue[_Worker | None] = queue.LifoQueue()
        for _ in range(size):
            self._idle.put(None)  # a slot; its worker starts on first use

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
               enable_thinking: bool | None) -> str:
        """The prompt, or :class:`TemplateRenderError`."""
        worker = self._idle.get()
        try:
            if worker is None or worker.process.poll() is not None:  # not started yet, or gone since
                self._discard(worker)
                worker = _Worker(self.template, self.timeout_s, self.max_chars, self.memory_bytes)
            answer = worker.render({"messages": messages, "tools": tools, "enable_thinking": enable_thinking},
                                   self.timeout_s)
            if answer.get("code") in _WORKER_ENDS:
                worker = self._discard(worker)
        except TimeoutError:
            worker = self._discard(worker)
            raise TemplateRenderError(f"the chat template did not finish rendering within {self.timeout_s:g} s",
                                      500, "chat_template_timeout") from None
        except (OSError, EOFError, ValueError):  # the worker died (its memory limit, a kill): a new one next time
            worker = self._discard(worker)
            raise TemplateRenderError("the chat template worker died while rendering", 500,
                                      "chat_template_failed") from None
        finally:
            self._idle.put(worker)
        if "text" in answer:
            return answer["text"]
        status = 400 if answer["code"] in ("chat_template_error", "prompt_too_large") else 500
        raise TemplateRenderError(answer["message"], status, answer["code"])

    @staticmethod
    def _discard(worker: _Worker | None) -> None:
        if worker is not None:
            worker.kill()

    def close(self) -> None:
        """Stop every worker."""
        while not self._idle.empty():
            worker = self._idle.get_nowait()
            if worker is not None:
                worker.kill()


def _render_one(template: ChatTemplate, job: dict[str, Any], max_chars: int) -> dict[str, Any]:
    try:
        text = template.render(job["messages"], job["tools"], job["enable_thinking"], max_chars=max_chars)
    except TemplateOutputTooLarge as exc:
        return {"code": "prompt_too_large", "message": str(exc)}
    except MemoryError:
        return {"code": "chat_template_memory", "message": "the chat template used more memory than allowed"}
    except RecursionError:
        return {"code": "chat_template_failed", "message": "the chat template recursed too deeply"}
    except ValueError as exc:
        return {"code": "chat_template_error", "message": str(exc)}
    except Exception as exc:  # the template's own bug
        return {"code": "chat_template_failed", "message": f"the chat template failed: {type(exc).__name__}: {exc}"}
    return {"text": text}


def _address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    """The worker: read the template, then render jobs until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server stops us (stdin EOF)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.buffer
    setup = _read(stdin)
    template = ChatTemplate(setup["source"], setup["variables"])
    limit = _address_space() + int(setup["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the alarm kills the process, even inside C code
    _write(stdout, {"ready": True})
    while True:
        try:
            job = _read(stdin)
        except EOFError:
            return
        signal.setitimer(signal.ITIMER_REAL, float(setup["alarm_s"]))
        answer = _render_one(template, job, int(setup["max_chars"]))
        signal.setitimer(signal.ITIMER_REAL, 0)
        _write(stdout, answer)
        if answer.get("code") in _WORKER_ENDS:
            return


if __name__ == "__main__":
    main()
