"""The Ray Data job on a local Ray of 2 CPUs: the same records as one process from PNG folders,
tar shards, a Parquet file and a saved dataset; a killed actor replaced without losing or doubling
an image; a resume that computes nothing; a directory of another job's settings refused. Skipped
where `fastgen[ray]` is not installed."""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import signal
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pq = pytest.importorskip("pyarrow.parquet")

from fastgen import DiffusionClassifier  # noqa: E402
from fastgen.builtin.digits_data import CLASS_NAMES, digits_split, to_pil  # noqa: E402
from fastgen.commands.main import main  # noqa: E402
from fastgen.inputs.sources import open_sources  # noqa: E402
from fastgen.jobs.local import classify_sources  # noqa: E402
from fastgen.jobs.ray_job import classify_ray  # noqa: E402
from fastgen.jobs.results_dir import list_parts, read_part_objects  # noqa: E402
from fastgen.jobs.results_file import ResultsFileError, is_record, read_results  # noqa: E402

N_IMAGES = 60
BUILD = functools.partial(
    DiffusionClassifier.from_pretrained,
    "builtin:digits", device="cpu", policy="exhaustive", policy_options={"n_samples": 2},
)  # fmt: skip


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A Ray of 2 CPUs on loopback only, for this module; the classifier factories of this file
    travel to its workers by value (they cannot import the tests folder)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # A short folder: Ray's socket paths must fit in 107 bytes.
    temp = Path(f"/tmp/fgray{os.getpid()}")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=str(temp))
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)  # Ray's logs and sockets of this session


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """The first 60 held-out digits as PNG files in folders named by their class."""
    root = tmp_path_factory.mktemp("digits")
    _, _, test_x, test_y = digits_split()
    for i in range(N_IMAGES):
        folder = root / CLASS_NAMES[test_y[i]]
        folder.mkdir(exist_ok=True)
        to_pil(test_x[i]).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def one_process(digits_folder, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("one") / "results.jsonl"
    summary = classify_sources(BUILD(), open_sources([digits_folder]), out=out, progress=False)
    assert summary.computed == N_IMAGES
    return read_results(out)


def all_records(out: Path) -> list[dict]:
    """Every record of every part, duplicates included."""
    return [obj for part in list_parts(out) for obj in read_part_objects(part) if is_record(obj)]


def assert_same_results(records: dict, reference: dict) -> None:
    assert sorted(records) == sorted(reference)
    for key, record in records.items():
        assert record["prediction"] == reference[key]["prediction"], key
        assert record["scores"] == pytest.approx(reference[key]["scores"], rel=1e-5, abs=1e-7), key
        assert record["unet_evals"] == reference[key]["unet_evals"]


@pytest.fixture(scope="module")
def other_forms(digits_folder, tmp_path_factory) -> dict[str, list[Path]]:
    """The same 60 digits as WebDataset shards (labels in `.cls`), one Parquet file (labels in a
    column) and, where `datasets` is installed, a saved Hugging Face dataset (a ClassLabel);
    name or row i is digit i, as in `digits_folder`."""
    root = tmp_path_factory.mktemp("forms")
    pngs = sorted(digits_folder.rglob("*.png"), key=lambda p: p.name)
    images, labels = [p.read_bytes() for p in pngs], [CLASS_NAMES.index(p.parent.name) for p in pngs]
    for shard in range(3):
        with tarfile.open(root / f"digits-{shard}.tar", "w") as tar:
            for i in range(shard * 20, shard * 20 + 20):
                for name, data in ((f"{i:03d}.png", images[i]), (f"{i:03d}.cls", str(labels[i]).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    pa = pytest.importorskip("pyarrow")
    pq.write_table(
        pa.table({"id": [f"{i:03d}" for i in range(N_IMAGES)], "png": images, "label": labels}), root / "d.parquet"
    )
    forms = {"shards": sorted(root.glob("*.tar")), "parquet": [root / "d.parquet"]}
    try:
        import datasets
    except ImportError:
        return forms
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    pil = [Image.open(io.BytesIO(data)) for data in images]
    datasets.Dataset.from_dict({"image": pil, "label": labels}, features=features).save_to_disk(str(root / "saved"))
    return {**forms, "saved": [root / "saved"]}


def digit_index(key: str) -> int:
    """The digit a record's id names: the number that ends it (file name, tar key, id or row)."""
    return int(re.search(r"(\d+)(\.png)?$", key)[1])


def test_two_actors_write_the_one_process_records_from_every_form_as_parquet_parts(
    local_ray, digits_folder, other_forms, one_process, tmp_path
):
    out = tmp_path / "results"
    forms = {"png": [digits_folder], **other_forms}
    inputs = [path for paths in forms.values() for path in paths]
    summary = classify_ray(
        BUILD, open_sources(inputs, label_column="label"), out=out, actors=2, images_per_block=8, out_format="parquet",
        labels_from_folders=True, progress=False,
    )  # fmt: skip
    total = len(forms) * N_IMAGES
    assert (summary.computed, summary.skipped, summary.failed, summary.total) == (total, 0, 0, total)
    parts = list_parts(out)
    assert parts and all(p.suffix == ".parquet" for p in parts)
    rows = [pq.read_table(p).num_rows for p in parts]  # plain Parquet, readable by any reader
    # Each actor task's records are a part of their own, written when the task is done: one block
    # of 8, or two where a read task's short last block went with a full one. The first results
    # of a long job do not wait for a fixed count of records.
    assert sum(rows) == total and max(rows) < 2 * 8
    records = read_results(out)
    reference = {digit_index(k): r for k, r in one_process.items()}
    truth = {digit_index(k): Path(k).parent.name for k in one_process}
    for name, paths in forms.items():
        of_form = {digit_index(k): r for k, r in records.items() if k.startswith(tuple(map(str, paths)))}
        assert_same_results(of_form, reference)
        if name != "png":  # the source's label, as a class name
            assert all(r["label"] == truth[i] for i, r in of_form.items()), name
    right = sum(r["prediction"] == truth[i] for i, r in reference.items())
    assert summary.labelled == total and summary.accuracy == pytest.approx(right / N_IMAGES)

    # Other settings are refused before anything is computed; the parts are left as they were.
    other = functools.partial(BUILD, policy_options={"n_samples": 3})
    with pytest.raises(ResultsFileError, match="another job's results"):
        classify_ray(other, open_sources([digits_folder]), out=out, actors=2, progress=False)
    assert list_parts(out) == parts


# -- a classifier that holds its first block until told, so an actor can be killed mid-block ----
def _held(classify_stream, gate: Path):
    def held(items):
        (gate / f"started-{os.getpid()}").touch()
        while not (gate / "go").exists():
            time.sleep(0.05)
        yield from classify_stream(items)

    return held


def _build_held(gate: str) -> DiffusionClassifier:
    clf = BUILD()
    clf.classify_stream = _held(clf.classify_stream, Path(gate))
    return clf


def _classifying_actor_pids() -> set[int]:
    """Pids of the pool's live actors, from Ray's actor table. (`ray.util.state.list_actors`
    reads the same table through the dashboard, which `ray[data]` does not install.)"""
    from ray._private import state

    actors = state.actors().values()
    return {a["Pid"] for a in actors if a["State"] == "ALIVE" and "ClassifyRows" in a["ActorClassName"]}


def test_a_killed_actor_is_replaced_and_every_image_is_written_once(
    local_ray, digits_folder, one_process, tmp_path, capsys
):
    gate, out = tmp_path / "gate", tmp_path / "results"
    gate.mkdir()
    build = functools.partial(_build_held, str(gate))
    job: dict = {}

    def run() -> None:
        try:
            job["summary"] = classify_ray(
                build, open_sources([digits_folder]), out=out, actors=2, images_per_block=6, progress=False
            )
        except BaseException as error:  # reported by the assertion below
            job["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not list(gate.glob("started-*")) and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        holding = {int(p.name.split("-")[1]) for p in gate.glob("started-*")}
        victims = holding & _classifying_actor_pids()  # pids as Ray's state API reports them
        assert victims, (holding, job)
        victim = min(victims)
        os.kill(victim, signal.SIGKILL)
    finally:
        (gate / "go").touch()
        thread.join(timeout=240)
    assert "error" not in job and not thread.is_alive(), job
    assert victim not in _classifying_actor_pids()
    assert job["summary"].computed == N_IMAGES
    records = all_records(out)
    assert len(records) == N_IMAGES and len({r["path"] for r in records}) == N_IMAGES  # none lost, none twice
    assert_same_results(read_results(out), one_process)

    # The same job from the command line computes nothing and changes no part.
    parts = {p.name: p.stat().st_mtime_ns for p in list_parts(out)}
    command = ["classify", str(digits_folder), "--out", str(out), "--ray", "--ray-actors", "2", "--device", "cpu",
               "--policy", "exhaustive", "--n-samples", "2", "--no-progress"]  # fmt: skip
    assert main(command) == 0
    assert (
        f"images: {N_IMAGES}, computed: 0, skipped (already in output): {N_IMAGES}, failed: 0"
        in capsys.readouterr().err
    )
    assert {p.name: p.stat().st_mtime_ns for p in list_parts(out)} == parts


def _digit_png(i: int) -> bytes:
    _, _, test_x, _ = digits_split()
    buffer = io.BytesIO()
    to_pil(test_x[i]).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_shard(path: Path, first: int, count: int, mode: str = "w") -> None:
    with tarfile.open(path, mode) as tar:
        for i in range(first, first + count):
            data = _digit_png(i)
            info = tarfile.TarInfo(f"{i:03d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_repeats_compressed_and_replaced_shards_damaged_parts_and_links_as_in_one_process(
    local_ray, digits_folder, tmp_path, caplog
):
    """One Ray job over a list that names files twice, a .tar.gz shard and a shard that cannot be
    read: each id once with a warning, the compressed shard read, the broken one an error; the
    shard replaced and the job run again with retry_failed computes its images and retires its
    error; a damaged part is named and its images computed again; a second run through a link to
    the same output is refused."""
    from fastgen.inputs.items import source_of_error
    from fastgen.jobs.output_lock import OutputInUse, OutputLock

    pngs = sorted(digits_folder.rglob("*.png"))[:6]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in [*pngs, *pngs[:3]]) + "\n")  # three named twice
    _write_shard(tmp_path / "z.tar.gz", 10, 4, mode="w:gz")
    broken = tmp_path / "b.tar"
    broken.write_bytes(b"this is no tar file at all" * 40)
    out = tmp_path / "results"
    inputs = [listing, tmp_path / "z.tar.gz", broken]
    with caplog.at_level("WARNING", logger="fastgen.jobs.ray_job"):
        summary = classify_ray(BUILD, open_sources(inputs), out=out, actors=1, out_format="parquet", progress=False)
    assert "3 images were given more than once" in caplog.text
    records = all_records(out)
    keys = [r["path"] for r in records]
    assert len(keys) == len(set(keys)) == 6 + 4 + 1  # each id once; one error for the broken shard
    errors = [r["path"] for r in records if "error" in r]
    assert len(errors) == 1 and source_of_error(errors[0]) == str(broken)  # the shard's own error
    assert sum(k.startswith(f"{tmp_path / 'z.tar.gz'}#") for k in keys) == 4
    assert (summary.computed, summary.failed) == (10, 1)

    # The shard replaced: with retry_failed its images are computed and its error is withdrawn.
    _write_shard(broken, 20, 3)
    summary = classify_ray(
        BUILD, open_sources(inputs), out=out, actors=1, out_format="parquet", retry_failed=True, progress=False
    )
    latest = read_results(out)
    assert summary.computed == 3 and summary.errors_in_output == 0
    assert errors[0] not in latest and sum(k.startswith(f"{broken}#") for k in latest) == 3

    # A damaged part: named, left as it is, and its images computed again.
    victim = max(list_parts(out), key=lambda p: p.stat().st_size)
    damaged = victim.read_bytes()[: victim.stat().st_size // 2]
    victim.write_bytes(damaged)
    caplog.clear()
    with caplog.at_level("WARNING"):
        summary = classify_ray(BUILD, open_sources(inputs), out=out, actors=1, out_format="parquet", progress=False)
    assert victim.name in caplog.text and victim.read_bytes() == damaged
    assert summary.computed > 0 and set(read_results(out)) == set(latest)

    # Another path to the same output shares its lock.
    link = tmp_path / "link-to-results"
    link.symlink_to(out, target_is_directory=True)
    holder = OutputLock(out)
    holder.acquire()
    try:
        with pytest.raises(OutputInUse):
            classify_ray(BUILD, open_sources(inputs), out=link, actors=1, progress=False)
    finally:
        holder.release()


def _build_counting(counter: str, batch_size: int) -> DiffusionClassifier:
    """builtin:digits with its default rule; every denoiser call appends a byte to `counter`."""
    clf = DiffusionClassifier.from_pretrained("builtin:digits", device="cpu", batch_size=batch_size)
    inner = clf.denoise

    def counted(*args, **kwargs):
        with open(counter, "ab") as handle:
            handle.write(b".")
        return inner(*args, **kwargs)

    clf.denoise = counted
    return clf


def test_an_actor_keeps_its_denoiser_batches_full_across_blocks(local_ray, tmp_path):
    """160 digits under the sequential rule, blocks of 16 images: the actor's calls stay within
    1.2x of one stream's at the same denoiser batch (blocks drained one by one took 3.9x)."""
    _, _, test_x, _ = digits_split()
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(160):
        to_pil(test_x[i]).save(folder / f"{i:03d}.png")
    stream_counter, ray_counter = tmp_path / "stream.count", tmp_path / "ray.count"
    one = _build_counting(str(stream_counter), 320)
    one.classify(sorted(str(p) for p in folder.glob("*.png")))
    build = functools.partial(_build_counting, str(ray_counter), 320)
    classify_ray(build, open_sources([folder]), out=tmp_path / "out", actors=1, images_per_block=16, progress=False)
    stream_calls, ray_calls = stream_counter.stat().st_size, ray_counter.stat().st_size
    assert stream_calls > 10
    assert ray_calls <= 1.2 * stream_calls, (ray_calls, stream_calls)
