"""Measuring one benchmark process and the disk under it: wall time, the CPU and I/O of its whole process tree,
its peak memory, the page cache, and the raw sequential speed of the disk.

- CPU seconds (user, system) come from ``wait4``'s rusage, which adds up every descendant that was waited for
  (the converter's worker processes are);
- bytes read from and written to storage (``read_bytes``/``write_bytes`` of ``/proc/<pid>/io``): the kernel adds
  a reaped child's counters to its parent's, so once the benchmark has waited for the run, the growth of its own
  ``/proc/self/io`` is exactly what the whole tree read and wrote (procfs reads count nothing); during the run,
  the tree's live counters are sampled for the timeline;
- peak RSS is the largest sum of RSS over the tree at one sample; the page cache is ``Cached`` in /proc/meminfo.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

GB = 1e9
SAMPLE_S = 0.02
MEMINFO_EVERY = 10  # samples between /proc/meminfo reads
BLOCK = 16 << 20


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cached_gb() -> float:
    """The page cache (``Cached`` in /proc/meminfo), in GB."""
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024 / GB
    return 0.0


def drop_cache(path: Path) -> None:
    """Drop the page cache of every file under ``path`` (written back first), as a cold start would have it."""
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(path: Path) -> None:
    """Read every file once so that a run starts from the page cache."""
    buf = mmap.mmap(-1, BLOCK)
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        with open(file, "rb", buffering=0) as handle:
            while handle.readinto(buf):
                pass


def disk_speed(work: Path, nbytes: int) -> dict[str, float]:
    """dd-like sequential write (16 MiB blocks, fsync at the end) then read (cache dropped first) of one file."""
    path = work / "disk-speed.bin"
    buf = mmap.mmap(-1, BLOCK)
    buf.write(os.urandom(BLOCK))
    blocks = max(1, nbytes // BLOCK)
    cpu0, start = os.times(), time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(blocks):
            os.write(fd, buf)
        os.fsync(fd)
    finally:
        os.close(fd)
    write_s, cpu1 = time.perf_counter() - start, os.times()
    drop_cache(path.parent)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buf):
            pass
    read_s, cpu2 = time.perf_counter() - start, os.times()
    path.unlink()
    gb = blocks * BLOCK / GB
    return {"gb": gb, "write_gb_per_s": gb / write_s, "read_gb_per_s": gb / read_s,
            "write_sys_s_per_gb": (cpu1.system - cpu0.system) / gb,
            "read_sys_s_per_gb": (cpu2.system - cpu1.system) / gb,
            "loadavg": loadavg()}


@dataclass
class Usage:
    """What one process tree did: see the module docstring for where each number comes from."""

    returncode: int = 0
    wall_s: float = 0.0
    user_s: float = 0.0
    sys_s: float = 0.0
    io_read_bytes: int = 0
    io_write_bytes: int = 0
    rusage_write_bytes: int = 0
    peak_rss: int = 0
    cached_gb_before: float = 0.0
    cached_gb_peak: float = 0.0
    cached_gb_after: float = 0.0
    loadavg_before: list[float] = field(default_factory=list)
    loadavg_after: list[float] = field(default_factory=list)
    timeline: list[tuple[float, float, float, float]] = field(default_factory=list)  # s, written GB, RSS GB, cache GB


def _self_io() -> tuple[int, int]:
    counters = psutil.Process().io_counters()
    return counters.read_bytes, counters.write_bytes


def _sample_tree(root: psutil.Process, io: dict[int, tuple[int, int]]) -> int:
    """Record each live process's I/O counters; return the tree's RSS."""
    rss = 0
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in tree:
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                counters = proc.io_counters()
            io[proc.pid] = (counters.read_bytes, counters.write_bytes)
        except psutil.Error:
            continue
    return rss


def run_tree(argv: list[str], stdout: Path, stderr: Path) -> Usage:
    """Run ``argv`` to completion, sampling its process tree; its output goes to the two files."""
    usage = Usage(cached_gb_before=cached_gb(), loadavg_before=loadavg())
    usage.cached_gb_peak = usage.cached_gb_before
    io: dict[int, tuple[int, int]] = {}
    io_before, start = _self_io(), time.perf_counter()
    with stdout.open("wb") as out, stderr.open("wb") as err:
        child = subprocess.Popen(argv, stdout=out, stderr=err)
    pid, root, samples = child.pid, psutil.Process(child.pid), 0
    while True:
        done, status, rusage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        usage.peak_rss = max(usage.peak_rss, _sample_tree(root, io))
        if samples % MEMINFO_EVERY == 0:
            usage.cached_gb_peak = max(usage.cached_gb_peak, cached := cached_gb())
            written = sum(w for _, w in io.values()) / GB
            usage.timeline.append((round(time.perf_counter() - start, 2), round(written, 3),
                                   round(usage.peak_rss / GB, 3), round(cached, 2)))
        samples += 1
        time.sleep(SAMPLE_S)
    usage.wall_s = time.perf_counter() - start
    usage.returncode = child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by subprocess
    usage.user_s, usage.sys_s = rusage.ru_utime, rusage.ru_stime
    io_after = _self_io()
    usage.io_read_bytes, usage.io_write_bytes = io_after[0] - io_before[0], io_after[1] - io_before[1]
    usage.rusage_write_bytes = rusage.ru_oublock * 512  # the same kernel counter, through wait4's rusage
    usage.cached_gb_after, usage.loadavg_after = cached_gb(), loadavg()
    return usage
