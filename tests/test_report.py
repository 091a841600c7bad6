"""Calibration and the HTML report: fitted probabilities are better calibrated than a plain
softmax on records not used for fitting, bad input leaves a clear note and still a report, and
the page renders in a real headless Chromium with its figures."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastgen.api.calibration import Calibration, filled_errors, fit_calibration, scored_records
from fastgen.commands.main import main
from fastgen.eval.report import build_report, folder_labels, load_run

CLASSES = ["cat", "dog", "bird", "fish"]


def synthetic_results(folder: Path, n: int = 120, seed: int = 0, *, prune: bool = True) -> Path:
    """A results file as fastgen classify writes it: images in class folders, errors a few
    percent apart (so a plain softmax is nearly uniform), adaptive budgets, pruned classes."""
    rng = np.random.default_rng(seed)
    lines = [{"fastgen": "results", "format": 1, "version": "0", "model": "tiny", "settings": {"classes": CLASSES}}]
    for i in range(n):
        label = int(rng.integers(len(CLASSES)))
        errors = 0.5 + 0.02 * rng.standard_normal(len(CLASSES))
        errors[label] -= abs(0.03 * rng.standard_normal())
        path = folder / CLASSES[label] / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
        order = np.argsort(errors)
        kept = set(order[:2].tolist()) if prune and i % 2 else set(range(len(CLASSES)))
        scores = {c: (float(errors[k]) if k in kept else None) for k, c in enumerate(CLASSES)}
        partial = {c: (None if k in kept else float(errors[k])) for k, c in enumerate(CLASSES)}
        margin = np.sort(errors)[1] - np.sort(errors)[0]
        evals = int(40 + 400 * np.exp(-margin / 0.01))
        lines.append({"path": str(path), "prediction": CLASSES[int(order[0])], "scores": scores,
                      "partial_scores": partial, "unet_evals": evals})  # fmt: skip
    lines.append({"path": str(folder / "broken.png"), "error": "image file cannot be decoded"})
    out = folder / "results.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


def test_calibration_beats_the_plain_softmax_on_held_out_records(tmp_path):
    run = load_run(synthetic_results(tmp_path))
    scored = scored_records(run.records, run.classes, folder_labels(run))
    calibration = fit_calibration(scored, fit_fraction=0.5, seed=0)
    before, after = calibration.metrics["before"], calibration.metrics["after"]
    assert calibration.method == "platt" and calibration.metrics["held_out"] == 60
    assert after["ece"] < before["ece"] and after["nll"] < before["nll"] and after["brier"] < before["brier"]
    # Round trip through the file, and the same probabilities for a record's dict form.
    calibration.save(tmp_path / "c.json")
    loaded = Calibration.load(tmp_path / "c.json")
    record = run.records[1]
    p = loaded.probabilities(record["scores"], record["unet_evals"], record["partial_scores"])
    assert abs(sum(p.values()) - 1) < 1e-9 and max(p, key=p.get) == record["prediction"]
    assert all(v > 0 for v in p.values())  # pruned classes keep a small probability


def test_pruned_classes_rank_below_every_survivor():
    scores = {"cat": 0.40, "dog": None, "bird": 0.45, "fish": None}
    partial = {"cat": None, "dog": 0.30, "bird": None, "fish": None}  # dropped early, on a lucky sample
    errors = filled_errors(scores, CLASSES, partial)
    assert errors[0] == 0.40 and errors[2] == 0.45
    assert errors[1] > 0.45 and errors[3] > 0.45 and errors.argmin() == 0


def test_classes_unknown_to_the_calibration_are_still_scored(tmp_path):
    calibration = Calibration("temperature", 0.01, classes=["cat", "dog"])
    p = calibration.probabilities({"zebra": 0.3, "okapi": 0.31, "cat": None}, 50)
    assert set(p) == {"zebra", "okapi", "cat"} and p["zebra"] > p["okapi"] > p["cat"] > 0


def test_calibrate_command_prints_metrics_and_never_overwrites(tmp_path, capsys):
    results = synthetic_results(tmp_path)
    out = tmp_path / "calibration.json"
    assert main(["calibrate", str(results), "--labels-from-folders", "--out", str(out), "--json"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(printed.strip().splitlines()[-1])
    assert "plain softmax" in printed and metrics["after"]["ece"] < metrics["before"]["ece"]
    written = out.read_text()
    assert main(["calibrate", str(results), "--labels-from-folders", "--out", str(out)]) != 0
    assert out.read_text() == written and "never overwrites" in capsys.readouterr().err


def test_bad_input_leaves_notes_and_a_report(tmp_path):
    results = synthetic_results(tmp_path / "run", n=12)
    run = load_run(results)
    page = build_report(run, tmp_path / "labelled.html", labels=folder_labels(run))
    text = page.read_text()
    assert "1 error record(s)" in text and 'id="confusion-matrix"' in text and 'id="reliability-diagram"' in text
    assert (tmp_path / "labelled_figures" / "confusion-matrix.png").stat().st_size > 1000
    # No labels at all: the label-dependent figures are left out, and the page says why.
    text = build_report(run, tmp_path / "unlabelled.html").read_text()
    assert "No labels" in text and 'id="confusion-matrix"' not in text and 'id="unet-evals"' in text
    # An empty file, and a file of error records only.
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    text = build_report(load_run(empty), tmp_path / "empty.html").read_text()
    assert "no scored record" in text
    errors_only = tmp_path / "errors.jsonl"
    errors_only.write_text(json.dumps({"path": "/x/a.png", "error": "cannot be decoded"}) + "\n")
    text = build_report(load_run(errors_only), tmp_path / "errors.html").read_text()
    assert "1 error record(s)" in text and "no scored record" in text
    # The results file itself is never changed.
    assert results.read_text().count("\n") == 14


# Colours only one figure draws: the darkest cell of the confusion matrix (matplotlib's "Blues"
# at its maximum) and the calibrated series of the reliability diagram (tab10 orange).
FIGURE_COLOURS = {"confusion-matrix": (8, 48, 107), "reliability-diagram": (255, 127, 14)}


def _pixels_near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    return int((np.abs(rgb - np.array(colour)).max(axis=-1) <= tolerance).sum())


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_report_renders_in_headless_chromium(tmp_path):
    import base64
    import io
    import re

    results = synthetic_results(tmp_path / "run", n=40)
    run = load_run(results)
    page = build_report(run, tmp_path / "report.html", labels=folder_labels(run))
    flags = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--disable-background-networking", "--disable-component-update", "--no-first-run"]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    # The DOM as Chromium parsed it holds each figure as its own decodable PNG, of its own content.
    for figure, colour in FIGURE_COLOURS.items():
        found = re.search(rf'<img id="{figure}"[^>]*src="data:image/png;base64,([^"]+)"', dom)
        assert found, f"{figure} is not in the rendered DOM"
        image = Image.open(io.BytesIO(base64.b64decode(found.group(1))))
        assert image.width > 200 and _pixels_near(image, colour) > 100, figure
        others = [c for f, c in FIGURE_COLOURS.items() if f != figure]
        assert all(_pixels_near(image, c) < 20 for c in others), f"{figure} draws another figure's colour"
    # The screenshot shows both figures: each one's own colour is on screen.
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,4000", page.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    screen = Image.open(shot)
    assert np.asarray(screen.convert("L"), dtype=np.float64).std() > 20  # not a blank page
    for figure, colour in FIGURE_COLOURS.items():
        assert _pixels_near(screen, colour) > 100, f"{figure} is not visible in the screenshot"


def test_demo_writes_a_report(tmp_path, capsys):
    folder = tmp_path / "demo"
    assert main(["demo", "--n-images", "6", "--report", str(folder), "--policy", "exhaustive",
                 "--n-samples", "4"]) == 0  # fmt: skip
    text = (folder / "report.html").read_text()
    assert 'id="confusion-matrix"' in text and (folder / "results.jsonl").exists()
    assert json.loads((folder / "results.jsonl").read_text().splitlines()[1])["path"].endswith(".png")


def test_classify_with_a_calibration_adds_probabilities_to_every_line(tmp_path, capsys):
    from fastgen.eval.demo import write_demo_images

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    write_demo_images(3, "digits", tmp_path / "images", names)
    calibration = tmp_path / "c.json"
    Calibration("temperature", 0.005, classes=names).save(calibration)
    out = tmp_path / "results.jsonl"
    args = ["classify", str(tmp_path / "images"), "--out", str(out), "--no-progress", "--policy", "exhaustive",
            "--n-samples", "4"]  # fmt: skip
    assert main([*args, "--calibration", str(calibration)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    assert len(records) == 3
    for record in records:
        p = record["probabilities"]
        assert set(p) == set(names) and abs(sum(p.values()) - 1) < 1e-6 and max(p, key=p.get) == record["prediction"]
    bad = tmp_path / "not-calibration.json"
    bad.write_text("{}")
    assert main([*args, "--out", str(tmp_path / "other.jsonl"), "--calibration", str(bad)]) != 0
    assert "not a fastgen calibration file" in capsys.readouterr().err


def test_calibrate_refuses_a_file_without_labels_or_records_with_one_clear_line(tmp_path, capsys):
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    results = synthetic_results(tmp_path / "run", n=20)
    lines = results.read_text().splitlines()
    moved = [json.loads(line) for line in lines]
    for record in moved[1:]:
        record["path"] = str(unlabelled / Path(record["path"]).name)  # no class folder: no label
    (tmp_path / "unlabelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in moved))
    (tmp_path / "empty.jsonl").write_text("")
    for name in ("unlabelled.jsonl", "empty.jsonl"):
        out = tmp_path / f"{name}.calibration.json"
        assert main(["calibrate", str(tmp_path / name), "--labels-from-folders", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("fastgen calibrate: error: calibration needs labelled results: 0 record(s)")
        assert not out.exists()


def test_records_with_values_that_are_not_numbers_are_left_out_with_a_note(tmp_path):
    results = synthetic_results(tmp_path / "run", n=16)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    records[1]["scores"]["cat"] = "bad"
    records[2]["unet_evals"] = "many"
    records[3]["partial_scores"] = {"cat": [1, 2]}
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = load_run(results)
    assert len(run.records) == 16 - 3
    text = build_report(run, tmp_path / "report.html", labels=folder_labels(run)).read_text()
    assert "1 record(s) with a scores value that is not a number are left out" in text
    assert "1 record(s) with unet_evals that is not a number are left out" in text
    assert "1 record(s) with a partial_scores value that is not a number" in text
    assert 'id="confusion-matrix"' in text and 'id="reliability-diagram"' in text


def test_the_reliability_diagram_measures_a_calibration_on_images_it_was_not_fitted_on(tmp_path):
    run = load_run(synthetic_results(tmp_path / "run", n=60))
    labels = folder_labels(run)
    calibration = fit_calibration(scored_records(run.records, run.classes, labels), fit_fraction=0.5, seed=1)
    assert len(calibration.fitted_paths) == calibration.fitted_on == 30
    saved = tmp_path / "calibration.json"
    calibration.save(saved)
    text = build_report(run, tmp_path / "report.html", labels=labels, calibration=Calibration.load(saved)).read_text()
    assert "Reliability on 30 images not used for fitting" in text
    other = Calibration("temperature", 0.01, classes=["cat", "dog"])
    text = build_report(run, tmp_path / "other.html", labels=labels, calibration=other).read_text()
    assert "The calibration was fitted on other classes: this run has 2 class(es) it never saw" in text


def test_a_calibration_of_other_classes_is_warned_about(model_dirs, tmp_path, caplog):
    import logging

    from fastgen import DiffusionClassifier

    calibration = tmp_path / "c.json"
    Calibration("temperature", 0.01, classes=["zebra", "okapi"]).save(calibration)
    with caplog.at_level(logging.WARNING, logger="fastgen.api.classifier"):
        DiffusionClassifier.from_pretrained(model_dirs["pixel-text"], classes=["cat", "dog"], calibration=calibration)
    assert "fitted on other classes: this run has 2 class(es) it never saw (cat, dog)" in caplog.text


def test_report_command_prints_its_notes(tmp_path, capsys):
    results = synthetic_results(tmp_path / "run", n=10)
    assert main(["report", str(results), "--out", str(tmp_path / "r.html")]) == 0
    err = capsys.readouterr().err
    assert "No labels" in err and "1 error record(s)" in err


def test_report_refuses_an_existing_out_file_and_leaves_it_as_it_was(tmp_path, capsys):
    results = synthetic_results(tmp_path / "run", n=10)
    mine = tmp_path / "mine.html"
    mine.write_bytes(b"<p>my own page</p>\n")
    assert main(["report", str(results), "--out", str(mine)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastgen report: error: --out ") and "--force" in err[0]
    assert mine.read_bytes() == b"<p>my own page</p>\n" and not (tmp_path / "mine_figures").exists()
    assert main(["report", str(results), "--out", str(mine), "--force"]) == 0
    assert 'id="unet-evals"' in mine.read_text()


def test_report_refuses_a_figures_folder_with_files_in_it(tmp_path, capsys):
    results = synthetic_results(tmp_path / "run", n=10)
    figures = tmp_path / "page_figures"
    figures.mkdir()
    (figures / "margins.png").write_bytes(b"my own figure")
    assert main(["report", str(results), "--out", str(tmp_path / "page.html")]) == 2
    assert "its figures folder" in capsys.readouterr().err and not (tmp_path / "page.html").exists()
    assert [p.name for p in figures.iterdir()] == ["margins.png"]
    assert (figures / "margins.png").read_bytes() == b"my own figure"


def test_report_default_out_is_never_overwritten_either(tmp_path, capsys):
    results = synthetic_results(tmp_path / "run", n=10)
    assert main(["report", str(results)]) == 0
    page = results.with_suffix(".html")
    written = page.read_bytes()
    assert main(["report", str(results), "--labels-from-folders"]) == 2
    assert "the default --out" in capsys.readouterr().err and page.read_bytes() == written


def test_report_calibration_without_labels_is_refused(tmp_path, capsys):
    results = synthetic_results(tmp_path / "run", n=10)
    calibration = tmp_path / "c.json"
    Calibration("temperature", 0.01, classes=CLASSES).save(calibration)
    assert main(["report", str(results), "--calibration", str(calibration)]) == 2
    assert "needs labels: add --labels-from-folders" in capsys.readouterr().err
    assert not results.with_suffix(".html").exists()


def test_calibrate_force_replaces_its_out_file(tmp_path, capsys):
    results = synthetic_results(tmp_path)
    out = tmp_path / "calibration.json"
    out.write_text("my notes")
    assert main(["calibrate", str(results), "--labels-from-folders", "--out", str(out), "--force"]) == 0
    assert Calibration.load(out).method == "platt"


def test_labels_given_by_a_source_are_used_before_folder_names(tmp_path):
    """Records of tar shards and tables carry their source's label; their ids name no folder."""
    header = {"fastgen": "results", "format": 1, "version": "0", "model": "tiny", "settings": {"classes": CLASSES}}
    scores = {c: 0.5 + 0.01 * k for k, c in enumerate(CLASSES)}
    records = [
        {"path": "/data/shard-0.tar#000001", "label": "dog", "prediction": "cat", "scores": scores, "unet_evals": 8},
        {
            "path": "/data/table.parquet#7",
            "label": "not-a-class",
            "prediction": "cat",
            "scores": scores,
            "unet_evals": 8,
        },
        {"path": str(tmp_path / "fish" / "a.png"), "prediction": "cat", "scores": scores, "unet_evals": 8},
    ]
    out = tmp_path / "results.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in [header, *records]))
    by_path = dict(zip((r["path"] for r in load_run(out).records), folder_labels(load_run(out))))
    assert by_path == {
        "/data/shard-0.tar#000001": "dog",
        "/data/table.parquet#7": None,
        str(tmp_path / "fish" / "a.png"): "fish",
    }


def test_the_report_counts_undecided_images_and_their_share_of_the_errors(tmp_path):
    folder = tmp_path / "data"
    results = synthetic_results(folder, n=40, seed=3, prune=False)
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    run = load_run(results)
    labels = folder_labels(run)
    wrong = [r["path"] for r, label in zip(run.records, labels) if "scores" in r and r["prediction"] != label]
    right = [r["path"] for r, label in zip(run.records, labels) if "scores" in r and r["prediction"] == label]
    assert wrong and right  # the seeded data has both
    marked = {wrong[0], right[0], right[1]}
    for line in lines:
        if line.get("path") in marked:
            line.update(decided=False, survivors=list(line["scores"])[:2])
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))
    run = load_run(results)
    page = build_report(run, tmp_path / "report.html", labels=folder_labels(run)).read_text()
    scored = sum("scores" in r for r in run.records)
    expected = f"3 of {scored} scored image(s) are undecided; 1 of the {len(wrong)} error(s) among the labelled images are undecided ones."
    assert f'<p id="undecided">{expected}</p>' in page
    plain = build_report(load_run(synthetic_results(tmp_path / "plain", n=10)), tmp_path / "plain.html")
    assert 'id="undecided"' not in plain.read_text()  # nothing to say when every image is decided
