"""Results directories (what `fastgen classify --ray` writes), without Ray: read as the results
file with the same records reads (latest record per image, counted once), by `read_results`,
`fastgen report` and `fastgen calibrate`; checked, locked and resumed as a results file is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastgen.commands.main import main
from fastgen.eval.report import load_run
from fastgen.jobs.dir_output import claim_results_dir, ids_to_skip, prepare_results_dir
from fastgen.jobs.output_lock import OutputInUse
from fastgen.jobs.ray_job import ActorResources, actor_resources
from fastgen.jobs.results_dir import list_parts, part_name, write_dir_header, write_part
from fastgen.jobs.results_file import ResultsFileError, is_header, read_results, results_header

CLASSES = ["cat", "dog", "bird"]
HEADER = results_header("tiny", {"classes": CLASSES, "n_samples": 4})


def labelled_records(folder: Path, n: int = 90, seed: int = 0) -> list[dict]:
    """Records as a job writes them for images in class folders: errors a few percent apart,
    the true class most often lowest."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        label = int(rng.integers(len(CLASSES)))
        errors = 0.5 + 0.02 * rng.standard_normal(len(CLASSES))
        errors[label] -= abs(0.03 * rng.standard_normal())
        path = folder / CLASSES[label] / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
        scores = {c: float(e) for c, e in zip(CLASSES, errors)}
        records.append({"path": str(path), "prediction": CLASSES[int(np.argmin(errors))], "scores": scores,
                        "partial_scores": dict.fromkeys(CLASSES), "unet_evals": 12})  # fmt: skip
    return records


@pytest.fixture
def file_and_dir(tmp_path) -> tuple[Path, Path]:
    """The same job as a directory of mixed parts and as a results file. Image 0 first failed
    (run 1) and was then retried (run 2): the directory holds both parts, the file both lines, in
    the order the directory's parts are read (parts of one run sort by their ids' hash, and the
    order of records is what a seeded fit/held-out split draws from)."""
    pytest.importorskip("pyarrow.parquet")  # Parquet parts: installed with fastgen[ray]
    records = labelled_records(tmp_path / "images")
    failed = {"path": records[0]["path"], "error": "image file cannot be decoded"}
    folder = tmp_path / "results"
    write_dir_header(folder, HEADER)
    blocks = {}
    for block, out_format in zip([[failed, *records[1:40]], records[40:]], ("jsonl", "parquet")):
        blocks[write_part(folder, part_name(1, [r["path"] for r in block], out_format), HEADER, block)] = block
    blocks[write_part(folder, part_name(2, [records[0]["path"]], "jsonl"), HEADER, [records[0]])] = [records[0]]
    results = tmp_path / "results.jsonl"
    lines = [HEADER, *(record for part in list_parts(folder) for record in blocks[part])]
    results.write_text("".join(json.dumps(obj) + "\n" for obj in lines))
    return results, folder


def test_a_directory_reads_as_the_file_of_the_same_records(file_and_dir):
    results, folder = file_and_dir
    assert len(list_parts(folder)) == 3
    assert read_results(folder) == read_results(results)  # the retried image once, its latest record
    from_file, from_dir = load_run(results), load_run(folder)
    assert from_dir.header == HEADER and len(from_dir.records) == 90
    assert sorted(from_dir.records, key=lambda r: r["path"]) == sorted(from_file.records, key=lambda r: r["path"])


def test_report_and_calibrate_read_a_directory(file_and_dir, tmp_path, capsys):
    results, folder = file_and_dir
    metrics = []
    for source in (results, folder):
        out = tmp_path / f"calibration-{source.name}.json"
        assert main(["calibrate", str(source), "--labels-from-folders", "--out", str(out), "--json"]) == 0
        metrics.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert metrics[0] == metrics[1] and metrics[1]["held_out"] == 45
    page = tmp_path / "report.html"
    assert main(["report", str(folder), "--labels-from-folders", "--out", str(page)]) == 0
    assert page.stat().st_size > 10_000 and "90" in page.read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no results folder" in capsys.readouterr().err


def test_a_directory_of_other_settings_is_refused_unless_forced(file_and_dir):
    _, folder = file_and_dir
    other = results_header("tiny", {"classes": CLASSES, "n_samples": 8})
    parts = list_parts(folder)
    with pytest.raises(ResultsFileError, match="n_samples: 4 in the file, 8 now"):
        prepare_results_dir(folder, other)
    assert json.loads((folder / "header.json").read_text()) == HEADER
    (folder / ".tmp-0123-part-00002-0000000000000000.jsonl").write_text('{"path": "/cut')  # a killed task's
    contents = prepare_results_dir(folder, other, force=True)
    assert json.loads((folder / "header.json").read_text()) == other and contents.header == other
    assert sorted(p.name for p in folder.iterdir()) == sorted(["header.json", *(p.name for p in parts)])
    # The parts keep the header they were written under.
    assert all(is_header(json.loads(p.read_text().splitlines()[0])) for p in parts if p.suffix == ".jsonl")


def test_a_resume_leaves_out_what_the_directory_holds_and_errors_only_without_retry(file_and_dir, tmp_path):
    _, folder = file_and_dir
    failed_before = tmp_path / "images" / "one_error"
    write_part(
        folder, part_name(3, [str(failed_before)], "jsonl"), HEADER, [{"path": str(failed_before), "error": "x"}]
    )
    contents = prepare_results_dir(folder, HEADER)
    assert len(ids_to_skip(contents, retry_failed=False)) == 91
    assert ids_to_skip(contents, retry_failed=True) == ids_to_skip(contents, retry_failed=False) - {str(failed_before)}


def test_the_directory_lock_and_what_it_refuses(tmp_path):
    folder = tmp_path / "results"
    lock = claim_results_dir(folder)
    try:
        with pytest.raises(OutputInUse, match="being written by another fastgen run"):
            claim_results_dir(folder)
    finally:
        lock.release()
    claim_results_dir(folder).release()  # free again once released
    a_file = tmp_path / "results.jsonl"
    a_file.write_text("")
    with pytest.raises(ResultsFileError, match="is a file; with --ray, --out names a folder"):
        claim_results_dir(a_file)
    users = tmp_path / "photos"
    users.mkdir()
    (users / "holiday.png").write_bytes(b"")
    with pytest.raises(
        ResultsFileError, match=r"holds files that are not a fastgen results directory's \(holiday.png\)"
    ):
        claim_results_dir(users)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--out-format", "parquet"], "--out-format applies to a Ray job: add --ray"),
        (["--ray-actors", "2"], "--ray-actors applies to a Ray job: add --ray"),
        (["--ray"], "--ray writes part files into a folder: name it with --out"),
    ],
)
def test_ray_options_are_refused_where_they_cannot_apply(tmp_path, capsys, options, message):
    assert main(["classify", str(tmp_path), *options]) == 2
    assert message in capsys.readouterr().err


def test_an_input_taken_for_the_ray_address_is_refused(tmp_path, capsys):
    shard = tmp_path / "a.tar"
    shard.write_bytes(b"")
    assert main(["classify", "--ray", str(shard), str(tmp_path / "b.tar"), "--out", str(tmp_path / "out")]) == 2
    assert "expected local, auto or a cluster address" in capsys.readouterr().err


def test_actors_ask_for_a_gpu_each_or_share_the_cpus_but_one():
    assert actor_resources({"CPU": 64, "GPU": 8}) == ActorResources(8, 1, 1)
    assert actor_resources({"CPU": 64, "GPU": 8}, gpus_per_actor=0.5) == ActorResources(16, 0.5, 1)
    assert actor_resources({"CPU": 64, "GPU": 8}, 3) == ActorResources(3, 1, 1)
    # CPU actors leave one CPU to the reading and decoding tasks, or they would never run.
    assert actor_resources({"CPU": 2}, 2) == ActorResources(2, 0, 0.5)
    assert actor_resources({"CPU": 16}) == ActorResources(1, 0, 15)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="gpus_per_actor"):
            actor_resources({"GPU": 1}, gpus_per_actor=bad)
    with pytest.raises(ValueError, match="actors must be at least 1"):
        actor_resources({"CPU": 2}, 0)
