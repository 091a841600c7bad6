"""A Parquet input is read as a stream (`fastgen.inputs.tables.ParquetSource`): opened without
pre-buffering, read batch by batch (never as a whole table), only the columns the job needs, in
batches that hold fewer rows when the images are large, so a job's memory does not grow with
the file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fastgen.inputs import tables
from fastgen.inputs.sources import open_sources

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class WatchedParquetFile(pq.ParquetFile):
    """pyarrow's ParquetFile, noting how it is opened and read, and refusing whole-table reads."""

    opened: list[dict] = []
    batches_pulled = 0
    columns_read: list[list[str]] = []

    def __init__(self, source, **options):
        WatchedParquetFile.opened.append(options)
        super().__init__(source, **options)

    def read(self, *args, **kwargs):
        raise AssertionError("the whole table was read")

    def read_row_group(self, *args, **kwargs):
        raise AssertionError("a whole row group was read")

    def read_row_groups(self, *args, **kwargs):
        raise AssertionError("whole row groups were read")

    def iter_batches(self, *args, columns=None, **kwargs):
        WatchedParquetFile.columns_read.append(list(columns))
        for batch in super().iter_batches(*args, columns=columns, **kwargs):
            WatchedParquetFile.batches_pulled += 1
            yield batch


@pytest.fixture
def watched(monkeypatch):
    WatchedParquetFile.opened, WatchedParquetFile.columns_read = [], []
    WatchedParquetFile.batches_pulled = 0
    monkeypatch.setattr(pq, "ParquetFile", WatchedParquetFile)
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("read_table read the whole file"))
    return WatchedParquetFile


def test_a_parquet_file_is_streamed_batch_by_batch_without_pre_buffering(tmp_path, watched, monkeypatch):
    n = 120
    table = pa.table({
        "id": [f"r{i}" for i in range(n)], "png": [png(i) for i in range(n)], "digit": [i % 10 for i in range(n)],
        "unused": [b"x" * 100] * n,
    })  # fmt: skip
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=10)  # 12 row groups
    monkeypatch.setattr(tables, "ROWS_PER_BATCH", 4)
    (source,) = open_sources([tmp_path / "t.parquet"], image_column="png", id_column="id", label_column="digit")
    items = source.items()
    first = next(items)
    assert first.id.endswith("#r0") and first.payload == png(0) and first.label == "0"
    assert watched.batches_pulled == 1  # one batch read, not the file nor its first row group
    rest = list(items)
    assert [item.id.rpartition("#")[2] for item in rest] == [f"r{i}" for i in range(1, n)]
    assert watched.batches_pulled == n // 4
    assert all(options.get("pre_buffer") is False for options in watched.opened) and watched.opened
    assert watched.columns_read == [["png", "id", "digit"]]


def test_batches_of_large_images_hold_fewer_rows(tmp_path):
    rng = np.random.default_rng(0)
    large = [rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes() for _ in range(60)]  # distinct, incompressible
    pq.write_table(pa.table({"png": large, "id": list(range(60))}), tmp_path / "large.parquet")
    pq.write_table(pa.table({"png": [png(0)] * 300}), tmp_path / "small.parquet")
    large_rows = tables.batch_rows(pq.ParquetFile(tmp_path / "large.parquet").metadata, ["png"])
    assert tables.BATCH_BYTES // 220_000 <= large_rows <= tables.BATCH_BYTES // 200_000
    assert tables.batch_rows(pq.ParquetFile(tmp_path / "small.parquet").metadata, ["png"]) == tables.ROWS_PER_BATCH
