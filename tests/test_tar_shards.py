"""WebDataset tar shards (`fastgen.inputs.tar_shards`): compressed shards read like plain ones,
damage included, and a member whose extension has several dots is its sample's image when its
last extension is an image type."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastgen.inputs.sources import TRUNCATED, TarSource, folder_label, open_sources, split_key

COMPRESSORS = {".tar.gz": gzip.compress, ".tgz": gzip.compress, ".tar.bz2": bz2.compress, ".tar.xz": lzma.compress}


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


SAMPLES = [(f"{i:03d}.png", png(i)) for i in range(4)] + [("003.cls", b"7")]
PLAIN = tar_bytes([SAMPLES[0], SAMPLES[1], SAMPLES[2], SAMPLES[4], SAMPLES[3]])


def read(path: Path) -> list[tuple[str, bytes | None, str | None, str | None]]:
    """(key, payload, label, error) of each item, ids and messages without their shard's path."""
    return [
        (item.id.rpartition("#")[2], item.payload, item.label, item.error and item.error.replace(str(path), "SHARD"))
        for item in TarSource(str(path)).items()
    ]


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_a_compressed_shard_gives_the_items_of_the_plain_one(tmp_path, suffix):
    plain, packed = tmp_path / "s.tar", tmp_path / f"s{suffix}"
    plain.write_bytes(PLAIN)
    packed.write_bytes(COMPRESSORS[suffix](PLAIN))
    expected = read(plain)
    assert [key for key, *_ in expected] == ["000", "001", "002", "003"] and expected[3][2] == "7"
    assert read(packed) == expected


def test_a_cut_compressed_shard_gives_what_it_holds_then_one_truncated_item(tmp_path):
    packed = tmp_path / "s.tar.gz"
    whole = gzip.compress(PLAIN)
    packed.write_bytes(whole[: len(whole) // 2])
    items = list(TarSource(str(packed)).items())
    assert items[-1].id == f"{packed}#{TRUNCATED}" and "truncated or damaged" in items[-1].error
    assert all(item.payload == data for item, (_, data) in zip(items[:-1], SAMPLES) if item.error is None)


def test_damage_and_padding_inside_a_compressed_shard_are_told_apart(tmp_path):
    damaged = bytearray(PLAIN)
    at = damaged.index(b"001.png")  # the header of sample 1: its checksum no longer holds
    damaged[at : at + 7] = b"\xff" * 7
    padded = bytes(damaged) + b"\0" * 4096 + tar_bytes([("100.png", png(100))])
    (tmp_path / "plain.tar").write_bytes(padded)
    (tmp_path / "packed.tar.xz").write_bytes(lzma.compress(padded))
    expected = read(tmp_path / "plain.tar")
    assert [key for key, *_ in expected] == ["000", f"<damaged-at-{at}>", "002", "003", "100"]
    assert read(tmp_path / "packed.tar.xz") == expected


def test_a_member_named_key_dot_view_dot_png_is_its_samples_image(tmp_path):
    shard = tmp_path / "views.tar"
    shard.write_bytes(tar_bytes([("two.left.png", png(2)), ("two.cls", b"2"), ("one.txt", b"no image")]))
    assert split_key("two.left.png") == ("two", "left.png")
    two, one = TarSource(str(shard)).items()
    assert two.id == f"{shard}#two" and two.payload == png(2) and two.label == "2" and two.error is None
    assert one.payload is None and "has no image member (found .txt)" in one.error


def test_globs_read_compressed_shards_and_other_compressions_are_refused_by_name(tmp_path):
    (tmp_path / "a.tar").write_bytes(PLAIN)
    (tmp_path / "b.tar.gz").write_bytes(gzip.compress(PLAIN))
    sources = open_sources([str(tmp_path / "*.tar*")])
    assert [Path(s.name).name for s in sources] == ["a.tar", "b.tar.gz"]
    assert all(isinstance(s, TarSource) for s in sources)
    (tmp_path / "c.tar.zst").write_bytes(b"(\xb5/\xfd not read")
    with pytest.raises(ValueError, match=r"c\.tar\.zst: a tar shard compressed in a way fastgen cannot read"):
        open_sources([str(tmp_path / "*.tar*")])
    with pytest.raises(ValueError, match=r"c\.tar\.zst"):
        open_sources([tmp_path / "c.tar.zst"])
    (tmp_path / "d.png").write_bytes(png(5))
    files, *shards = open_sources([str(tmp_path / "*")])  # a glob of everything skips what it cannot read
    assert [p.name for p in files.paths] == ["d.png"] and len(shards) == 2


def test_folder_labels_come_from_image_files_only():
    assert folder_label("/data/cat/001.png") == "cat"
    assert folder_label("/data/cat#2/001.png") == "cat#2"
    for source_id in ("/data/cat/s.tar#001", "/data/cat/s.tar.gz#001", "/data/cat/t.parquet#7"):
        assert folder_label(source_id) is None, source_id
