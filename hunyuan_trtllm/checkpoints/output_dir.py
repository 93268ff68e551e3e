"""Output directories: what ``--overwrite`` may delete, the conversion lock, free space.

One policy for every command that writes a directory (convert, triton-repo, deploy; synth, quantize and build only
ever write new or empty directories):

- an output that *is* or *contains* an input (model, checkpoint, tokenizer, plan) is refused, and with
  ``--overwrite`` so is one *inside* an input;
- ``--overwrite`` replaces only a directory that is empty or recognizably ours (our ``manifest.json``,
  ``repo.json``, generated deployment files); anything else is refused with one line, nothing deleted.

The conversion lock is a POSIX record lock (``fcntl.lockf``, which NFS honours across hosts) on
``.hunyuan-trtllm.lock`` in the output directory: byte 0 shared by every run (exclusive for ``--overwrite``),
byte 1 held around manifest/config.json updates, byte 2+N exclusive while rank N is being written. So runs
writing different ``--ranks`` of one checkpoint (the multi-host split) proceed together, and a second run that
would write the same rank file, or replace the directory, refuses at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from hunyuan_trtllm.errors import UserError

LOCK_NAME = ".hunyuan-trtllm.lock"
_WHOLE, _META, _FIRST_RANK = 0, 1, 2
_BUSY = (errno.EACCES, errno.EAGAIN)


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_not_an_input(out: Path, inputs: Iterable[Path | None], overwrite: bool) -> None:
    """Refuse an output directory that is or contains an input, or (with ``--overwrite``) is inside one."""
    target = Path(out).expanduser().resolve()
    for given in (i for i in inputs if i is not None):
        source = Path(given).expanduser().resolve()
        if target == source:
            raise UserError(f"-o {out}: is the input {given}; choose another output directory")
        if target in source.parents:
            raise UserError(f"-o {out}: contains the input {given}; choose another output directory")
        if overwrite and source in target.parents:
            raise UserError(f"-o {out}: is inside the input {given}; --overwrite never deletes inside an input, "
                            "choose an output directory elsewhere")


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(p.name != LOCK_NAME for p in path.iterdir())


def check_replaceable(out: Path, ours: Callable[[Path], bool], what: str) -> None:
    """``--overwrite`` may replace ``out`` only when it is empty or ``ours(out)`` recognizes it."""
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: exists and is not a directory; --overwrite replaces only directories")
    if out.is_dir() and not is_empty_dir(out) and not ours(out):
        raise UserError(f"-o {out}: --overwrite replaces only {what} written by hunyuan-trtllm, and this directory "
                        "holds something else; nothing was deleted: choose another output directory")


def require_free_space(directory: Path, needed: int, reclaimable: int = 0) -> None:
    """Refuse before writing when the filesystem holding ``directory`` lacks ``needed`` bytes."""
    probe = directory
    while not probe.exists():
        probe = probe.parent
    stat = os.statvfs(probe)
    free = stat.f_bavail * stat.f_frsize + reclaimable
    if free < needed:
        raise UserError(f"{directory}: not enough free disk space: {human_bytes(needed)} needed, "
                        f"{human_bytes(free)} free; free up {human_bytes(needed - free)} or choose another disk")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class ConversionLock:
    """The record locks a conversion holds on its output directory (see the module docstring)."""

    def __init__(self, out_dir: Path, overwrite: bool):
        self.out_dir = out_dir
        self.fd = os.open(out_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        kind = fcntl.LOCK_EX if overwrite else fcntl.LOCK_SH
        if not self._try(kind, _WHOLE):
            self.close()
            raise UserError(f"{out_dir}: another conversion is writing into this directory; wait for it to finish "
                            "or choose another output directory")

    def _try(self, kind: int, byte: int) -> bool:
        try:
            fcntl.lockf(self.fd, kind | fcntl.LOCK_NB, 1, byte)
        except OSError as exc:
            if exc.errno in _BUSY:
                return False
            raise
        return True

    def lock_ranks(self, ranks: Iterable[int]) -> None:
        """Hold rank N's file for this run; refuse when another run is writing it."""
        for rank in ranks:
            if not self._try(fcntl.LOCK_EX, _FIRST_RANK + rank):
                raise UserError(f"{self.out_dir}: another conversion is writing rank {rank} into this directory; "
                                "wait for it to finish or choose another output directory")

    @contextlib.contextmanager
    def metadata(self) -> Iterator[None]:
        """Exclusive while the manifest, config.json or the set of finished ranks is read and updated (short)."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, _META)
        try:
            yield
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, _META)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases every lock this process holds on the file
            self.fd = -1


@contextlib.contextmanager
def locked_output_dir(out_dir: Path, overwrite: bool) -> Iterator[ConversionLock]:
    """Create (if needed) and lock ``out_dir``; a directory this call created is removed again if the block fails
    having written nothing into it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = ConversionLock(out_dir, overwrite)
    except OSError as exc:
        raise UserError(f"{out_dir}: output directory is not writable ({exc.strerror})") from None
    try:
        yield lock
    except BaseException:
        if created and is_empty_dir(out_dir):
            with contextlib.suppress(OSError):
                (out_dir / LOCK_NAME).unlink()
                out_dir.rmdir()
        raise
    finally:
        lock.close()
