"""Worker processes that never outlive the process that started them.

``convert --workers N`` runs N spawned processes. Each one, first thing in its initializer, asks the kernel to
SIGKILL it when its parent dies (``prctl(PR_SET_PDEATHSIG)``, Linux), checks the parent did not die before that
request, and watches the pipe the parent holds open (multiprocessing's parent sentinel, which reads EOF when the
parent is gone, whatever killed it: SIGKILL included, and on any OS). With the workers gone, multiprocessing's
resource tracker (whose pipe they hold) exits as well.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

PR_SET_PDEATHSIG = 1
T = TypeVar("T")


def die_with_parent(parent_pid: int) -> None:
    """Make this (worker) process exit as soon as ``parent_pid`` does."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the request above
        os._exit(1)
    parent = multiprocessing.parent_process()
    if parent is not None:
        def watch() -> None:
            parent.join()  # returns when the parent's end of the pipe closes
            os._exit(1)

        threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _initialize(parent_pid: int, initializer: Callable[..., None], args: tuple[Any, ...]) -> None:
    die_with_parent(parent_pid)
    initializer(*args)


def run_in_workers(workers: int, function: Callable[[T], T], items: Iterable[T],
                   initializer: Callable[..., None], initargs: tuple[Any, ...]) -> Iterator[T]:
    """``function(item)`` for every item in ``workers`` spawned processes, yielding results as they finish.

    If the consumer stops early or a task fails, queued tasks are cancelled (running ones finish: each is one
    tensor) before the exception propagates, so no worker keeps writing behind the caller's back.
    """
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_initialize,
                               initargs=(os.getpid(), initializer, initargs))
    try:
        futures: list[Future[T]] = [pool.submit(function, item) for item in items]
        for future in as_completed(futures):
            yield future.result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
