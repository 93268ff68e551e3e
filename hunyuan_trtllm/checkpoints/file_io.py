"""How the converter's bytes reach the disk, with as little kernel time and page cache as the file system allows.

Measured on a 2-core VM (README "Conversion speed"): with plain buffered ``pwrite`` about half of all CPU time
is the kernel copying into freshly allocated page-cache pages, and the output (and source) then sits in the page
cache, evicting everything else. The write modes:

- ``direct`` (default): the 4 KiB-aligned body of every write goes with ``O_DIRECT`` from one reused, page-aligned
  staging buffer per process (the disk DMAs from it: no page cache, no page allocation); the unaligned head and
  tail bytes (where two tensors share a block) go through the page cache, so concurrent writers of neighbouring
  tensors never race on a block. File systems without ``O_DIRECT`` (tmpfs) fall back to ``dropbehind``.
- ``dropbehind``: buffered writes; each write's range is queued for write-back at once (``sync_file_range``) and
  dropped from the page cache (``posix_fadvise DONTNEED``) once written.
- ``buffered``: plain ``pwrite`` (the page cache keeps everything until the kernel evicts it).

The bytes on disk are the same in every mode. :func:`drop_range` drops a source range once no task reads it again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

import torch

WRITE_MODES = ("direct", "dropbehind", "buffered")
DEFAULT_WRITE_MODE = "direct"
ALIGN = 4096  # page size: a page is never shared by a direct body and a buffered head or tail
STAGING_BYTES = 16 << 20
_SYNC_FILE_RANGE_WAIT_BEFORE, _SYNC_FILE_RANGE_WRITE, _SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_staging: list[mmap.mmap] = []  # one per process, allocated on first use


def staging_buffer() -> memoryview:
    """This process's page-aligned staging buffer (anonymous mmap: aligned, touched once, then reused)."""
    if not _staging:
        _staging.append(mmap.mmap(-1, STAGING_BYTES))
    return memoryview(_staging[0])


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)


def sync_range(fd: int, offset: int, nbytes: int, wait: bool) -> None:
    """Queue a range for write-back now (``sync_file_range``), and with ``wait`` also wait until it is on disk."""
    flags = _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER if wait else \
        _SYNC_FILE_RANGE_WRITE
    if _libc.sync_file_range(fd, ctypes.c_int64(offset), ctypes.c_int64(nbytes), flags) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def drop_range(fd: int, offset: int, nbytes: int) -> None:
    """Drop a range's clean pages from the page cache (dirty pages are left alone by the kernel)."""
    os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


class FileWriter:
    """Writes byte ranges of one existing file at absolute offsets, in one of :data:`WRITE_MODES`."""

    def __init__(self, path: os.PathLike[str] | str, mode: str = DEFAULT_WRITE_MODE):
        if mode not in WRITE_MODES:
            raise ValueError(f"write mode {mode!r}: expected one of {', '.join(WRITE_MODES)}")
        self.fd = os.open(path, os.O_WRONLY)
        self.direct_fd: int | None = None
        if mode == "direct":
            try:
                self.direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
            except OSError:  # no O_DIRECT here (tmpfs): keep the page cache clean the other way
                mode = "dropbehind"
        self.mode = mode
        self._behind: list[tuple[int, int]] = []  # dropbehind: ranges queued for write-back, dropped next time

    def write(self, offset: int, tensor: torch.Tensor) -> int:
        """Write a tensor's raw bytes at ``offset``; returns the bytes written."""
        data = tensor_bytes(tensor)
        if self.direct_fd is not None:
            self._write_direct(data, offset)
        else:
            pwrite_all(self.fd, data, offset)
            if self.mode == "dropbehind":
                self._drop_behind(offset, len(data))
        return len(data)

    def _write_direct(self, data: memoryview, offset: int) -> None:
        end = offset + len(data)
        body_start, body_end = -(-offset // ALIGN) * ALIGN, end // ALIGN * ALIGN
        if body_end <= body_start:
            pwrite_all(self.fd, data, offset)
            return
        pwrite_all(self.fd, data[: body_start - offset], offset)  # the head: shares a page with what precedes
        staging, at = staging_buffer(), body_start
        while at < body_end:
            n = min(len(staging), body_end - at)
            staging[:n] = data[at - offset : at - offset + n]
            try:
                pwrite_all(self.direct_fd, staging[:n], at)  # type: ignore[arg-type]
            except OSError:  # a file system that opened O_DIRECT but refuses this write: buffered from here on
                self.close_direct()
                pwrite_all(self.fd, data[at - offset :], at)
                return
            at += n
        pwrite_all(self.fd, data[body_end - offset :], body_end)  # the tail: shares a page with what follows

    def _drop_behind(self, offset: int, nbytes: int) -> None:
        for previous in self._behind:  # queued one write ago: mostly on disk by now; waits only if not
            sync_range(self.fd, *previous, wait=True)
            drop_range(self.fd, *previous)
        sync_range(self.fd, offset, nbytes, wait=False)
        self._behind = [(offset, nbytes)]

    def close_direct(self) -> None:
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None
            self.mode = "dropbehind"

    def close(self) -> None:
        for previous in self._behind:
            sync_range(self.fd, *previous, wait=True)
            drop_range(self.fd, *previous)
        self.close_direct()
        os.close(self.fd)
