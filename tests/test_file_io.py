"""Write modes put the same bytes on disk: FileWriter against plain file writes, and whole conversions byte for byte
across modes (O_DIRECT with buffered heads and tails, drop-behind, buffered)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from hunyuan_trtllm.checkpoints.convert import convert
from hunyuan_trtllm.checkpoints.file_io import ALIGN, STAGING_BYTES, WRITE_MODES, FileWriter
from hunyuan_trtllm.checkpoints.mapping import Mapping

from .conftest import golden


def _pieces(total: int, seed: int) -> list[tuple[int, int]]:
    """Consecutive (offset, size) pieces of [0, total): sizes from 1 byte to past the staging buffer."""
    rng, pieces, at = random.Random(seed), [], 0
    sizes = [1, 7, ALIGN - 3, ALIGN, ALIGN + 1, 3 * ALIGN + 5, STAGING_BYTES + ALIGN + 11, 100_003]
    while at < total:
        n = min(rng.choice(sizes), total - at)
        pieces.append((at, n))
        at += n
    return pieces


@pytest.mark.parametrize("mode", WRITE_MODES)
def test_writer_puts_every_byte_where_a_plain_write_would(tmp_path, mode):
    total = STAGING_BYTES + 40 * ALIGN + 123
    data = torch.randint(0, 256, (total,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "out.bin"
    with path.open("wb") as f:
        f.truncate(total)
    writer = FileWriter(path, mode)
    if mode == "direct":  # ext4 and xfs take O_DIRECT; only a file system without it falls back
        assert writer.direct_fd is not None or writer.mode == "dropbehind"
    pieces = _pieces(total, seed=2)
    random.Random(3).shuffle(pieces)  # any order, as worker processes finish
    for offset, n in pieces:
        assert writer.write(offset, data[offset : offset + n]) == n
    writer.close()
    assert path.read_bytes() == data.numpy().tobytes()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no tmpfs at /dev/shm")
def test_direct_falls_back_where_the_file_system_refuses_it(tmp_path):
    folder = Path("/dev/shm") / f"hunyuan-file-io-{os.getpid()}"
    folder.mkdir()
    try:
        path = folder / "out.bin"
        path.write_bytes(bytes(3 * ALIGN))
        writer = FileWriter(path, "direct")
        assert writer.write(5, torch.arange(200, dtype=torch.int32)) == 800
        writer.close()
        assert path.read_bytes()[5:805] == torch.arange(200, dtype=torch.int32).numpy().tobytes()
    finally:
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()


def test_unknown_mode_is_refused(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(ValueError, match="write mode"):
        FileWriter(tmp_path / "f", "mmap")


def test_rank_files_are_byte_identical_in_every_mode(tmp_path):
    outputs = {}
    for mode in WRITE_MODES:
        out = tmp_path / mode
        convert(golden("a13b-tiny"), out, Mapping(tp=2, moe_ep=2), dtype="bfloat16", workers=2,
                write_mode=mode)
        outputs[mode] = {p.name: p.read_bytes() for p in sorted(out.glob("rank*.safetensors"))}
    assert len(outputs["buffered"]) == 2
    assert outputs["direct"] == outputs["buffered"]
    assert outputs["dropbehind"] == outputs["buffered"]
