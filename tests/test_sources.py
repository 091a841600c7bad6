"""Input sources (`fastgen.inputs.sources`) through `fastgen classify`: the same 60 held-out digits
as PNG folders, a .txt list of paths, WebDataset tar shards, a Parquet file and a saved Hugging Face
dataset give the same predictions and scores, in one process and under torchrun x2; damaged
members and cells are one error record each, a cut shard is reported and the rest classified, and
a re-run computes nothing."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers import one_thread_env
from PIL import Image

from fastgen.builtin.digits_data import CLASS_NAMES, digits_split, to_pil
from fastgen.commands.main import main
from fastgen.inputs.sources import TRUNCATED, FileListSource, TarSource, class_label, open_sources, split_key
from fastgen.jobs.results_file import read_results

N_IMAGES = 60
SHARDS = 3
# Exhaustive, 2 samples: 10 classes x 2 rows fill one batch of 20, so each batch holds one image's
# rows whatever order a source gives the images in, and scores match across sources to the bit.
OPTIONS = [
    "--model", "builtin:digits", "--policy", "exhaustive", "--n-samples", "2", "--batch-size", "20",
    "--device", "cpu", "--local-files-only", "--no-progress",
]  # fmt: skip


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, images: list[bytes], labels: list[int], shards: int = SHARDS) -> list[Path]:
    """WebDataset shards: `KEY.png` with `KEY.cls` (a class index) in the first shards, `KEY.json`
    (a class name) in the last one."""
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(images) // shards)
    paths = []
    for s in range(shards):
        path = folder / f"digits-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s * per_shard, min(len(images), (s + 1) * per_shard)):
                add_member(tar, f"{i:03d}.png", images[i])
                if s < shards - 1:
                    add_member(tar, f"{i:03d}.cls", str(labels[i]).encode())
                else:
                    add_member(tar, f"{i:03d}.json", json.dumps({"label": CLASS_NAMES[labels[i]]}).encode())
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def digits() -> tuple[list[bytes], list[int]]:
    _, _, test_x, test_y = digits_split()
    return [png_bytes(x) for x in test_x[:N_IMAGES]], [int(y) for y in test_y[:N_IMAGES]]


@pytest.fixture(scope="module")
def collections(digits, tmp_path_factory) -> dict[str, Path]:
    """The same 60 digits in every form a source reads; row/key/file name i is digit i."""
    images, labels = digits
    root = tmp_path_factory.mktemp("sources")
    for i, (data, label) in enumerate(zip(images, labels)):
        folder = root / "png" / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(data)
    listed = sorted((root / "png").rglob("*.png"))
    lines = ["# the held-out digits", ""] + [str(p.relative_to(root)) for p in listed]
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    write_shards(root / "shards", images, labels)
    return {"png": root / "png", "txt": root / "list.txt", "shards": root / "shards", "root": root}


@pytest.fixture(scope="module")
def parquet_file(digits, collections) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    images, labels = digits
    path = collections["root"] / "digits.parquet"
    table = pa.table({"id": [f"{i:03d}" for i in range(N_IMAGES)], "png": images, "digit": labels})
    pq.write_table(table, path, row_group_size=25)  # several row groups: rows count across them
    return path


@pytest.fixture(scope="module")
def saved_dataset(digits, collections) -> Path:
    datasets = pytest.importorskip("datasets")
    images, labels = digits
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    pil = [Image.open(io.BytesIO(data)) for data in images]
    dataset = datasets.Dataset.from_dict({"image": pil, "label": labels}, features=features)
    path = collections["root"] / "digits-dataset"
    dataset.save_to_disk(str(path))
    return path


def classify(inputs: list[Path | str], out: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["classify", *map(str, inputs), "--out", str(out), *OPTIONS, *extra])
    return code, capsys.readouterr().err


def by_index(out: Path) -> dict[int, dict]:
    """Records by digit index: the number at the end of the id (file name, tar key, id column or row)."""
    records = {}
    for key, record in read_results(out).items():
        index = int(re.search(r"(\d+)(\.png)?$", key)[1])
        assert index not in records, f"two records for digit {index}"
        records[index] = record
    return records


def summary_counts(err: str) -> tuple[int, int, int]:
    """(images, computed, failed) as the job's summary line prints them."""
    found = re.search(r"images: (\d+), computed: (\d+), skipped \(already in output\): \d+, failed: (\d+)", err)
    assert found, err
    return int(found[1]), int(found[2]), int(found[3])


def printed_accuracy(err: str) -> tuple[float, int] | None:
    found = re.search(r"accuracy: ([\d.]+) over (\d+) labelled images", err)
    return (float(found[1]), int(found[2])) if found else None


@pytest.fixture(scope="module")
def reference(collections, tmp_path_factory) -> dict[int, dict]:
    """The PNG folders classified in one process, labels from the folders."""
    out = tmp_path_factory.mktemp("reference") / "png.jsonl"
    code = main(["classify", str(collections["png"]), "--out", str(out), *OPTIONS, "--labels-from-folders"])
    assert code == 0
    records = by_index(out)
    assert len(records) == N_IMAGES and all("scores" in r for r in records.values())
    return records


def assert_same_results(records: dict[int, dict], reference: dict[int, dict]) -> None:
    assert sorted(records) == sorted(reference)
    for index, record in records.items():
        expected = reference[index]
        assert record["prediction"] == expected["prediction"], index
        assert record["scores"] == pytest.approx(expected["scores"], rel=1e-5, abs=1e-6), index


def right_answers(records: dict[int, dict], labels: list[int]) -> int:
    return sum(records[i]["prediction"] == CLASS_NAMES[labels[i]] for i in records)


# -- reading sources --------------------------------------------------------------------------------
def test_open_sources_is_sorted_deduplicated_and_detects_each_kind(collections, parquet_file, saved_dataset):
    shards = sorted(collections["shards"].glob("*.tar"))
    inputs = [saved_dataset, str(collections["shards"] / "*.tar"), parquet_file, shards[0], collections["png"]]
    sources = open_sources(inputs)
    kinds = [type(s).__name__ for s in sources]
    assert kinds == ["FileListSource", "SavedDatasetSource", "ParquetSource", "TarSource", "TarSource", "TarSource"]
    assert [s.name for s in open_sources(list(reversed(inputs)))] == [s.name for s in sources]
    assert len(sources[0].paths) == N_IMAGES


def test_a_text_list_resolves_relative_paths_beside_itself_and_skips_comments(collections, tmp_path):
    (source,) = open_sources([collections["txt"]])
    assert isinstance(source, FileListSource) and len(source.paths) == N_IMAGES
    ids = [item.id for item in source.items()]
    assert all(os.path.isabs(i) and Path(i).is_file() for i in ids)


def test_tar_items_have_shard_and_key_ids_and_labels_from_cls_or_json(collections, digits):
    _, labels = digits
    items = [item for s in open_sources([collections["shards"] / "*.tar"]) for item in s.items()]
    assert len(items) == N_IMAGES and all(isinstance(item.payload, bytes) for item in items)
    shard = os.path.abspath(collections["shards"] / "digits-0000.tar")
    assert items[0].id == f"{shard}#000"
    assert [item.label for item in items[:40]] == [str(y) for y in labels[:40]]  # .cls: the index as written
    assert [item.label for item in items[40:]] == [CLASS_NAMES[y] for y in labels[40:]]  # .json: the name
    assert split_key("./a/b.seg.PNG") == ("a/b", "seg.png")


def test_class_indices_name_the_jobs_classes():
    assert class_label("3", CLASS_NAMES) == "three"
    assert class_label("three", CLASS_NAMES) == "three"
    assert class_label("12", CLASS_NAMES) == "12"
    assert class_label("tabby", CLASS_NAMES) == "tabby"


# -- the same results from every source -------------------------------------------------------------
@pytest.mark.parametrize("form", ["txt", "shards", "parquet", "dataset"])
def test_every_source_gives_the_png_folders_predictions_and_scores(
    form, collections, reference, digits, tmp_path, capsys, request
):  # fmt: skip
    _, labels = digits
    if form == "parquet":  # these fixtures skip where pyarrow or datasets is missing
        inputs = [request.getfixturevalue("parquet_file"), "--id-column", "id", "--label-column", "digit"]
    elif form == "dataset":
        inputs = [request.getfixturevalue("saved_dataset")]
    else:
        inputs = [collections["txt"] if form == "txt" else collections["shards"] / "*.tar"]
    out = tmp_path / "results.jsonl"
    code, err = classify(inputs, out, capsys)
    assert code == 0 and summary_counts(err) == (N_IMAGES, N_IMAGES, 0)
    records = by_index(out)
    assert_same_results(records, reference)
    accuracy = printed_accuracy(err)
    if form == "txt":  # files have no label without --labels-from-folders
        assert accuracy is None
    else:  # the source's labels, class indices named by the model's classes
        assert accuracy == (pytest.approx(right_answers(records, labels) / N_IMAGES, abs=5e-5), N_IMAGES)
        assert all(r["label"] == CLASS_NAMES[labels[i]] for i, r in records.items())


def test_a_rerun_of_every_source_at_once_computes_nothing(
    collections, parquet_file, saved_dataset, tmp_path, capsys
):  # fmt: skip
    inputs = [collections["shards"] / "*.tar", parquet_file, saved_dataset]
    out = tmp_path / "results.jsonl"
    code, err = classify(inputs, out, capsys)
    assert code == 0 and summary_counts(err) == (3 * N_IMAGES, 3 * N_IMAGES, 0)
    before = out.read_bytes()
    code, err = classify(inputs, out, capsys)
    assert code == 0 and summary_counts(err) == (3 * N_IMAGES, 0, 0) and "skipped (already in output): 180" in err
    assert out.read_bytes() == before


def test_two_torchrun_ranks_give_the_one_process_results_from_every_form(
    collections, parquet_file, saved_dataset, reference, tmp_path
):
    """One launch over the PNG folders, the tar shards, the Parquet file and the saved dataset
    together (one launch: each costs two fresh processes); each form's records equal the
    one-process run's."""
    out = tmp_path / "results.jsonl"
    forms = {
        "png": collections["png"], "tar": collections["shards"] / "*.tar", "parquet": parquet_file,
        "dataset": saved_dataset,
    }  # fmt: skip
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command = [*launcher, "-m", "fastgen", "classify", *map(str, forms.values()), "--out", str(out)]
    run = subprocess.run([*command, *OPTIONS], env=one_thread_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert summary_counts(run.stderr) == (4 * N_IMAGES, 4 * N_IMAGES, 0)
    records = read_results(out)
    prefixes = {form: str(path).removesuffix(f"{os.sep}*.tar") for form, path in forms.items()}
    for form, prefix in prefixes.items():
        of_form = {
            key: r for key, r in records.items() if key.startswith(prefix + os.sep) or key.startswith(prefix + "#")
        }
        indices = {int(re.search(r"(\d+)(\.png)?$", key)[1]): r for key, r in of_form.items()}
        assert len(indices) == len(of_form) == N_IMAGES, form
        assert_same_results(indices, reference)
    # labels from the shards' .cls and the dataset's ClassLabel (folders and a Parquet label
    # column are named by option)
    assert printed_accuracy(run.stderr)[1] == 2 * N_IMAGES


# -- damaged inputs ---------------------------------------------------------------------------------
def test_a_damaged_tar_member_is_one_error_record(digits, tmp_path, capsys):
    images, labels = digits
    broken = list(images[:6])
    broken[2] = images[2][:40] + b"\x00" * 30 + images[2][70:]  # a PNG whose image data is overwritten
    (shard,) = write_shards(tmp_path / "shards", broken, labels, shards=1)
    out = tmp_path / "results.jsonl"
    code, err = classify([shard], out, capsys)
    assert code == 0 and summary_counts(err) == (6, 5, 1)
    errors = {key: r["error"] for key, r in read_results(out).items() if "error" in r}
    assert list(errors) == [f"{shard}#002"] and "cannot be decoded" in errors[f"{shard}#002"]


def test_bad_parquet_cells_are_one_error_record_each(digits, tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    images, labels = digits
    cells = list(images[:6])
    cells[4] = b"not an image at all"
    cells[1] = None
    pq.write_table(pa.table({"png": cells, "digit": labels[:6]}), tmp_path / "t.parquet")
    out = tmp_path / "results.jsonl"
    code, err = classify([tmp_path / "t.parquet"], out, capsys, "--label-column", "digit")
    assert code == 0 and summary_counts(err) == (6, 4, 2)
    records = read_results(out)
    errors = {key.rpartition("#")[2]: r["error"] for key, r in records.items() if "error" in r}
    assert sorted(errors) == ["1", "4"]
    assert "is null" in errors["1"] and "cannot be decoded" in errors["4"]
    assert all(r["label"] == CLASS_NAMES[labels[int(k.rpartition("#")[2])]] for k, r in records.items())


def test_a_truncated_shard_is_reported_and_every_other_image_classified(digits, tmp_path, capsys):
    images, labels = digits
    shards = write_shards(tmp_path / "shards", images[:30], labels, shards=3)
    whole = shards[1].read_bytes()
    shards[1].write_bytes(whole[: len(whole) // 2 + 100])  # cut inside a member's data
    out = tmp_path / "results.jsonl"
    code, err = classify([tmp_path / "shards" / "*.tar"], out, capsys)
    records = read_results(out)
    cut = f"{shards[1]}#{TRUNCATED}"
    assert code == 0 and cut in records
    message = records[cut]["error"]
    assert str(shards[1]) in message and "truncated" in message
    classified = sorted(int(k.rpartition("#")[2]) for k, r in records.items() if "prediction" in r)
    read_from_cut = int(re.search(r"samples read before that: (\d+)", message)[1])
    assert 0 < read_from_cut < 10
    # every image of the whole shards, and those of the cut one before the cut (the last one it
    # reached may itself be cut short: then it is an error record of its own)
    assert set(range(10)) | set(range(20, 30)) <= set(classified)
    assert set(classified) <= set(range(10)) | set(range(10, 10 + read_from_cut)) | set(range(20, 30))
    assert summary_counts(err)[2] == len(records) - len(classified)
    code, err = classify([tmp_path / "shards" / "*.tar"], out, capsys)
    assert code == 0 and summary_counts(err)[1:] == (0, 0)


def test_a_damaged_member_header_costs_its_sample_only_and_is_reported(digits, tmp_path):
    images, labels = digits
    (shard,) = write_shards(tmp_path, images[:4], labels, shards=1)
    data = bytearray(shard.read_bytes())
    damaged_at = data.index(b"001.png")  # the header of sample 1's image member
    data[damaged_at : damaged_at + 7] = b"\xff" * 7  # the name changes, the checksum no longer holds
    shard.write_bytes(bytes(data))
    items = list(TarSource(str(shard)).items())
    keys = [item.id.rpartition("#")[2] for item in items]
    assert keys == ["000", f"<damaged-at-{damaged_at}>", "001", "002", "003"]
    assert [item.payload == images[i] for i, item in zip([0, 2, 3], [items[0], *items[3:]])] == [True] * 3
    assert "no readable tar header" in items[1].error and items[1].payload is None
    assert "no image member (found .json)" in items[2].error and items[2].label == CLASS_NAMES[labels[1]]


def test_concatenated_shards_and_padding_are_no_damage(digits, tmp_path):
    images, labels = digits
    first, second = write_shards(tmp_path, images[:4], labels, shards=2)
    joined = tmp_path / "joined.tar"
    joined.write_bytes(first.read_bytes() + b"\0" * 4096 + second.read_bytes())
    items = list(TarSource(str(joined)).items())
    assert [item.id.rpartition("#")[2] for item in items] == ["000", "001", "002", "003"]
    assert all(item.error is None for item in items)


def test_a_misspelt_column_is_refused_before_any_work(parquet_file, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    code, err = classify([parquet_file], out, capsys, "--label-column", "digits")
    assert code == 2 and "--label-column 'digits' is not a column" in err and "digit" in err
    assert not out.exists()


def test_a_cut_parquet_file_is_one_error_item(parquet_file, tmp_path):
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(parquet_file.read_bytes()[:-100])  # the footer (the schema) is lost
    (source,) = open_sources([cut])
    (item,) = list(source.items())
    assert item.id == f"{cut}#<unreadable>" and item.payload is None and "cannot be read" in item.error


def test_column_options_without_a_table_are_refused(collections, tmp_path, capsys):
    code, err = classify([collections["shards"] / "*.tar"], tmp_path / "r.jsonl", capsys, "--id-column", "id")
    assert code == 2 and "--id-column names a column of .parquet files or saved datasets" in err


# -- encoded bytes decode like files ----------------------------------------------------------------
def test_encoded_bytes_give_the_pixels_and_errors_of_the_same_file(tmp_path):
    from helpers import zero_png

    from fastgen.inputs.images import ImageError, load_pixels

    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (9, 13, 4), dtype=np.uint8), "RGBA")
    turned = Image.fromarray(rng.integers(0, 256, (10, 6, 3), dtype=np.uint8))
    exif = turned.getexif()
    exif[0x0112] = 6  # rotated: viewers turn it upright
    for name, image, options in (("a.png", rgba, {}), ("b.jpg", turned, {"exif": exif})):
        image.save(tmp_path / name, **options)
        data = (tmp_path / name).read_bytes()
        for channels in (1, 3):
            from_file = load_pixels(tmp_path / name, size=(6, 8), channels=channels)
            assert torch_equal(load_pixels(data, size=(6, 8), channels=channels), from_file)
    with pytest.raises(ImageError, match="over the limit"):
        load_pixels(zero_png(14000, 14000), size=8, channels=1)
    with pytest.raises(ImageError, match=r"encoded image \(5 bytes\) cannot be decoded"):
        load_pixels(b"\x89PNG\r", size=8, channels=1)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_the_classifier_takes_one_or_many_encoded_images(digits, collections):
    from fastgen import DiffusionClassifier

    images, _ = digits
    clf = DiffusionClassifier.from_pretrained(
        "builtin:digits", device="cpu", policy="exhaustive", policy_options={"n_samples": 2}, batch_size=20
    )
    (one,) = clf.classify(images[5])
    many = clf.classify(images[4:6])
    files = clf.classify(sorted(collections["png"].rglob("00[45].png")))
    assert [r.prediction for r in many] == [r.prediction for r in files] and one.prediction == many[1].prediction
    assert np.allclose(one.errors, files[1].errors, rtol=1e-5, atol=1e-7)


def test_a_glob_reads_text_files_as_path_lists_only_when_it_names_them(collections, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image path\n")
    (folder / "a.png").write_bytes(next(collections["png"].rglob("*.png")).read_bytes())
    (shard,) = sorted(collections["shards"].glob("*.tar"))[:1]
    (folder / "s.tar").write_bytes(shard.read_bytes())
    sources = open_sources([str(folder / "*")])
    assert [type(s).__name__ for s in sources] == ["FileListSource", "TarSource"]
    assert [p.name for p in sources[0].paths] == ["a.png"]
    (listed,) = open_sources([str(folder / "*.txt")])
    assert [p.name for p in listed.paths] == ["not an image path"]


def test_a_folder_of_shards_alone_is_refused_with_the_glob_to_use(collections, tmp_path, capsys):
    code, err = classify([collections["shards"]], tmp_path / "r.jsonl", capsys)
    assert code == 2 and "no image files found" in err and "shards/*.tar" in err


def test_repeated_ids_are_classified_once_with_a_warning(digits, tmp_path, capsys, caplog):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    images, labels = digits
    ids = ["a", "b", "a", "c"]
    pq.write_table(pa.table({"key": ids, "png": images[:4]}), tmp_path / "t.parquet")
    out = tmp_path / "results.jsonl"
    code, err = classify([tmp_path / "t.parquet"], out, capsys, "--id-column", "key")
    assert code == 0 and summary_counts(err) == (3, 3, 0)
    assert sorted(k.rpartition("#")[2] for k in read_results(out)) == ["a", "b", "c"]
    assert "1 images repeat the id of an image before them" in caplog.text


def test_a_parquet_image_struct_column_and_dataset_dict_splits_are_found(digits, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    images, labels = digits
    structs = [{"bytes": data, "path": None} for data in images[:3]]
    pq.write_table(pa.table({"name": ["x", "y", "z"], "image": structs}), tmp_path / "hf.parquet")
    (source,) = open_sources([tmp_path / "hf.parquet"])
    assert [item.payload for item in source.items()] == images[:3]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    split = {"image": [Image.open(io.BytesIO(d)) for d in images[:2]], "label": labels[:2]}
    splits = {name: datasets.Dataset.from_dict(split, features=features) for name in ("train", "test")}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dict"))
    items = [item for s in open_sources([tmp_path / "dict"]) for item in s.items()]
    root = os.path.abspath(tmp_path / "dict")
    assert [item.id for item in items] == [f"{root}/{s}#{i}" for s in ("test", "train") for i in (0, 1)]
    assert [item.label for item in items] == [CLASS_NAMES[y] for y in labels[:2]] * 2


# -- labels only from where the source has them; shard errors that no longer stand -------------------
def _mixed_inputs(digits, root: Path) -> tuple[list[Path], bytes]:
    """In a folder named like a class, a shard of 10 digits without label members (cut short, its
    whole bytes returned) and a Parquet file of 5 rows whose ids repeat twice, without a label
    column; beside it, 4 PNG files in folders named by their classes."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    images, labels = digits
    folder = root / "three"
    folder.mkdir(parents=True)
    with tarfile.open(folder / "s.tar", "w") as tar:
        for i in range(10):
            add_member(tar, f"{i:03d}.png", images[i])
    whole = (folder / "s.tar").read_bytes()
    (folder / "s.tar").write_bytes(whole[: 5 * 1024 + 512 + 20])  # inside sample 5's image (a header, then data)
    pq.write_table(pa.table({"key": ["a", "b", "a", "c", "b"], "png": images[10:15]}), folder / "t.parquet")
    for i in range(15, 19):
        (root / "png" / CLASS_NAMES[labels[i]]).mkdir(parents=True, exist_ok=True)
        (root / "png" / CLASS_NAMES[labels[i]] / f"{i:03d}.png").write_bytes(images[i])
    return [folder / "s.tar", folder / "t.parquet", root / "png"], whole


def test_folder_labels_are_an_image_files_never_a_shards_or_tables_folder(digits, tmp_path, capsys):
    inputs, _ = _mixed_inputs(digits, tmp_path)
    out = tmp_path / "results.jsonl"
    code, err = classify(inputs, out, capsys, "--id-column", "key", "--labels-from-folders")
    assert code == 0 and printed_accuracy(err)[1] == 4  # the PNG files only, not the "three" folder's rows
    assert not any("label" in record for record in read_results(out).values())


def test_a_replaced_shard_clears_its_shard_error_with_retry_failed(digits, tmp_path, capsys):
    from fastgen.eval.report import load_run

    inputs, whole = _mixed_inputs(digits, tmp_path)
    out = tmp_path / "results.jsonl"
    code, err = classify(inputs, out, capsys, "--id-column", "key")
    cut = f"{inputs[0]}#{TRUNCATED}"
    assert code == 0 and "error" in read_results(out)[cut]
    inputs[0].write_bytes(whole)  # the shard replaced by a whole copy
    code, err = classify(inputs, out, capsys, "--id-column", "key", "--retry-failed")
    records = read_results(out)
    assert code == 0 and cut not in records and "errors in output: 0" in err
    assert len(records) == 10 + 3 + 4 and all("prediction" in r for r in records.values())
    assert not any("error record" in note for note in load_run(out).notes)
    code, err = classify(inputs, out, capsys, "--id-column", "key")
    assert code == 0 and summary_counts(err) == (17, 0, 0) and "errors in output: 0" in err


def test_under_torchrun_repeated_ids_folder_labels_and_a_replaced_shard_are_as_in_one_process(
    digits, tmp_path, capsys
):  # fmt: skip
    """One launch: the rows whose ids repeat are classified once with one warning, only the PNG
    files get folder labels, and --retry-failed over the replaced shard retires its error."""
    inputs, whole = _mixed_inputs(digits, tmp_path)
    out = tmp_path / "results.jsonl"
    assert classify(inputs, out, capsys, "--id-column", "key")[0] == 0
    assert "error" in read_results(out)[f"{inputs[0]}#{TRUNCATED}"]
    inputs[0].write_bytes(whole)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    options = ["--id-column", "key", "--labels-from-folders", "--retry-failed"]
    command = [*launcher, "-m", "fastgen", "classify", *map(str, inputs), "--out", str(out), *OPTIONS, *options]
    run = subprocess.run(command, env=one_thread_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("images repeat the id of an image before them") == 1
    assert "2 images repeat the id" in run.stderr
    assert printed_accuracy(run.stderr)[1] == 4 and "errors in output: 0" in run.stderr
    records = read_results(out)
    assert f"{inputs[0]}#{TRUNCATED}" not in records and len(records) == 17
    assert sorted(k.rpartition("#")[2] for k in records if "t.parquet#" in k) == ["a", "b", "c"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len([r for r in lines if r.get("path", "").endswith("t.parquet#a")]) == 1  # one record per id
