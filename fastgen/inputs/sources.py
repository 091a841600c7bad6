"""Where a job's images come from: files, lists of files, WebDataset tar shards, Parquet tables and
Hugging Face datasets saved with `save_to_disk`, all read as one stream of `Item`s.

An item is one image, not yet decoded: a stable id, its encoded bytes (or its file path), and the
class name its source gives it, if any. Ids are what results files record and resume by, so they
never depend on the order, the working directory or the machine a job runs in:

* an image file: its absolute, normalised path (as `fastgen.jobs.results_file.path_key` writes it);
* a tar member: ``SHARD_ABSPATH#KEY`` (KEY: the member's path up to the first dot of its name,
  WebDataset's sample key); a shard may be gzip-, bzip2- or xz-compressed (``.tar.gz``...);
* a Parquet row: ``FILE_ABSPATH#ID`` with an id column, else ``FILE_ABSPATH#ROW`` (0-based);
* a saved Hugging Face dataset row: ``DIR_ABSPATH#ID`` or ``DIR_ABSPATH#ROW``.

Results files key records by `path_key(id)` (``os.path.abspath``: an id holding ``//`` or ``..``
is written folded, the same way in every run).

Reading never raises for one bad image: a member or cell that cannot be read becomes an `Item`
whose `error` says why (and whose payload is None); a tar member header that cannot be read is
skipped to the next readable one, with one item ``SHARD#<damaged-at-BYTE>`` saying so; a shard or
file that ends early yields what it could read, then one item with id ``SOURCE#<truncated>`` (or
``#<unreadable>`` when nothing of it could be read) saying so. Decoding the payload is
`fastgen.inputs.images`' job, by the same rules as for files.

Modules: `items` (Item, Source), `tar_shards` (TarSource), `tables` (ParquetSource,
SavedDatasetSource); this one lists image files and opens inputs of every kind.

Parquet and dataset folders need `pyarrow` (`pip install "fastgen[parquet]"`), saved datasets
`datasets` (`fastgen[datasets]`); both are imported only when such an input is read.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from fastgen.inputs.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, find_images, open_image
from fastgen.inputs.items import TRUNCATED, UNREADABLE, Item, Source, Wanted, absolute, everything
from fastgen.inputs.tables import ParquetSource, SavedDatasetSource, is_saved_dataset, is_saved_dataset_dict
from fastgen.inputs.tar_shards import TarSource, is_other_compressed_tar, is_tar_name, split_key

__all__ = [
    "TRUNCATED", "UNREADABLE", "FileListSource", "Item", "ParquetSource", "SavedDatasetSource", "Source",
    "TarSource", "Wanted", "class_label", "decode_payload", "folder_label", "open_sources", "read_path_list",
    "split_key",
]  # fmt: skip


def decode_payload(payload: bytes | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An item's image, upright, decoded by the rules files follow; any failure is an ImageError."""
    return open_image(payload, max_pixels=max_pixels)


def class_label(label: str | None, class_names: Sequence[str]) -> str | None:
    """A source's label as a class name: a name is kept; a class index (``"3"``) names the job's
    class at that position when there is one; anything else is kept as it is."""
    if label is None or label in class_names:
        return label
    text = label.strip()
    if text.isdigit() and int(text) < len(class_names):
        return class_names[int(text)]
    return text


def folder_label(item_id: str) -> str | None:
    """The label ``--labels-from-folders`` gives an item, from its id alone (a record's path): an
    image file's parent folder name; None for a tar member, a Parquet row or a saved dataset's row
    (``SOURCE#KEY``): the folder a shard or a table sits in says nothing of its images, whose labels
    come from the source itself (a ``.cls`` member, a label column). A dataset folder is told only
    while it exists. Where the source is known, `FileListSource` alone gives folder labels."""
    source, sep, _ = item_id.rpartition("#")
    if sep and (
        is_tar_name(source)
        or is_other_compressed_tar(source)
        or source.lower().endswith(".parquet")
        or is_saved_dataset(Path(source))
    ):
        return None
    return Path(item_id).parent.name


# -- image files ------------------------------------------------------------------------------------
@dataclass
class FileListSource:
    """Image files, in the order given; the payload is the path as named."""

    name: str
    paths: list[Path]

    def items(self, wanted: Wanted | None = None) -> Iterator[Item]:
        wanted = wanted or everything
        for path in self.paths:
            item_id = absolute(path)
            if wanted(item_id, None):
                yield Item(item_id, Path(path))


def read_path_list(list_file: Path) -> list[Path]:
    """The paths a text file lists, one per line; blank lines and ``#`` comments are ignored, and
    relative paths are taken from the list file's own folder."""
    folder = list_file.parent
    paths = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            paths.append(Path(text) if os.path.isabs(text) else folder / text)
    return paths


# -- opening inputs -------------------------------------------------------------------------------------
def _source_kind(path: Path) -> str:
    if path.is_dir():
        if is_saved_dataset(path):
            return "dataset"
        if is_saved_dataset_dict(path):
            return "dataset-dict"
        return "files"
    if not path.is_file():
        return "files"
    if is_tar_name(path):
        return "tar"
    if is_other_compressed_tar(path):
        return "other-tar"
    suffix = path.suffix.lower()
    return suffix.lstrip(".") if suffix in (".parquet", ".txt") else "files"


def open_sources(
    inputs: Sequence[str | Path],
    *,
    image_column: str | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
) -> list[Source]:
    """Sources for folders, globs and image files (one file-list source, as `find_images` lists
    them), ``.txt`` files of paths, WebDataset ``.tar`` shards (also gzip-, bzip2- or
    xz-compressed; a ``NAME.tar.EXT`` of another compression is refused by name), ``.parquet``
    files and folders written by `save_to_disk` (a DatasetDict's folder gives each split). A glob
    is expanded first, so ``shards/*.tar*`` names shards. Sorted by name and de-duplicated: the
    same inputs give the same sources in the same order whatever order they are named in."""
    table_options = {"image_column": image_column, "id_column": id_column, "label_column": label_column}
    files: list[str] = []
    sources: dict[str, Source] = {}
    for entry in _expand_globs(inputs):
        path = Path(entry)
        kind = _source_kind(path)
        name = absolute(path)
        if kind == "files":
            files.append(str(entry))
        elif kind == "other-tar":
            raise ValueError(
                f"{entry}: a tar shard compressed in a way fastgen cannot read (it reads .tar, .tar.gz or .tgz, "
                ".tar.bz2 and .tar.xz); decompress it to a .tar first"
            )
        elif kind == "txt":
            sources.setdefault(name, FileListSource(name, read_path_list(path)))
        elif kind == "tar":
            sources.setdefault(name, TarSource(name))
        elif kind == "parquet":
            sources.setdefault(name, ParquetSource(name, **table_options))
        elif kind == "dataset":
            sources.setdefault(name, SavedDatasetSource(name, **table_options))
        else:
            for split in _dataset_splits(path):
                sources.setdefault(absolute(split), SavedDatasetSource(absolute(split), **table_options))
    ordered = [sources[name] for name in sorted(sources)]
    check_options(ordered)
    if files:
        ordered.insert(0, FileListSource("<files>", find_images(files)))
    return ordered


def check_options(sources: Sequence[Source]) -> None:
    """Column options are checked on the first Parquet file and the first saved dataset, before
    any work: a misspelt column fails at once (later files with other columns are each an error
    record). A missing pyarrow or datasets is reported here too."""
    for kind in (ParquetSource, SavedDatasetSource):
        first = next((s for s in sources if isinstance(s, kind)), None)
        if first is not None:
            first.check()


def _dataset_splits(folder: Path) -> list[Path]:
    splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
    return [folder / split for split in splits]


def _expand_globs(inputs: Sequence[str | Path]) -> list[str]:
    """Inputs as named, a glob that matches tar shards, Parquet files or saved datasets replaced by
    its matches (other globs are left to `find_images`, which keeps only image files). A matched
    .txt file is a list of paths only when the pattern itself ends in .txt: ``photos/*`` must not
    read a folder's notes as image paths."""
    expanded: list[str] = []
    for entry in inputs:
        text = str(entry)
        if Path(text).exists() or not glob.has_magic(text):
            expanded.append(text)
            continue
        matches = sorted(glob.glob(text, recursive=True))
        special = [m for m in matches if _is_source_match(Path(m), text)]
        if not special:
            expanded.append(text)
            continue
        # the other matches as a glob keeps them: folders, and files with an image extension
        expanded += special + [m for m in matches if m not in special and _globbed_image_input(Path(m))]
    return expanded


def _is_source_match(path: Path, pattern: str) -> bool:
    """A glob's match read as a source; a shard fastgen cannot decompress only when the pattern
    names shards (``*.tar*``), so that ``photos/*`` is not refused for an archive among the photos."""
    kind = _source_kind(path)
    if kind == "other-tar":
        return ".tar" in pattern.lower()
    return kind != "files" and (kind != "txt" or pattern.lower().endswith(".txt"))


def _globbed_image_input(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES
