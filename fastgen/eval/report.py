"""`fastgen report`: one self-contained HTML page about a results file, PNG figures beside it.

The page holds accuracy overall and per class, the confusion matrix, a reliability diagram,
histograms of UNet evaluations per image and of margins, the hardest images as thumbnails with
their top classes, and the run's settings (from the results header). Figures are drawn with
matplotlib and embedded as base64 PNG: the page fetches nothing. Labels come from each image's
parent folder name (`labels_from_folders`); without labels the label-dependent parts are left
out and the page says so. Whatever is not valid (error records, records without any finite
score) is counted and named, never a reason not to build the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastgen.api.calibration import Calibration, fit_temperature, margins, scored_records, softmax_of_errors
from fastgen.inputs.sources import folder_label
from fastgen.optional import require

HARDEST = 12


@dataclass
class Run:
    """A results file's valid content, and what was left out of it and why."""

    header: dict[str, Any] | None
    records: list[dict[str, Any]]  # scored records, latest per path
    classes: list[str]
    notes: list[str] = field(default_factory=list)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def malformed(record: dict[str, Any]) -> str | None:
    """What makes a record unusable for the figures (None when it is usable): a score or partial
    score that is neither a finite number nor null, no finite score at all, or a budget that
    is not a number."""
    scores = record.get("scores")
    if not isinstance(scores, dict) or not any(_number(v) for v in scores.values()):
        return "no finite score"
    for field_name in ("scores", "partial_scores"):
        values = record.get(field_name) or {}
        if not isinstance(values, dict) or any(v is not None and not _number(v) for v in values.values()):
            return f"a {field_name} value that is not a number"
    if record.get("unet_evals") is not None and not _number(record["unet_evals"]):
        return "unet_evals that is not a number"
    return None


def run_from_records(header: dict[str, Any] | None, records: list[dict[str, Any]]) -> Run:
    """Split `records` into scored ones and notes on the rest (errors, unusable records)."""
    scored, notes, errors = [], [], 0
    unusable: dict[str, int] = {}
    for record in records:
        if "error" in record:
            errors += 1
            continue
        problem = malformed(record)
        if problem:
            unusable[problem] = unusable.get(problem, 0) + 1
            continue
        scored.append(record)
    if errors:
        notes.append(f"{errors} error record(s) (images that could not be classified) are not in the figures.")
    for problem, count in unusable.items():
        notes.append(f"{count} record(s) with {problem} are left out.")
    classes: list[str] = list((header or {}).get("settings", {}).get("classes") or [])
    for record in scored:
        classes += [c for c in record["scores"] if c not in classes]
    if not scored:
        notes.append("The file holds no scored record: there is nothing to plot.")
    return Run(header, scored, classes, notes)


def load_run(path: str | Path) -> Run:
    """A results file, read without changing it (`fastgen.jobs.results_file.scan_results`)."""
    from fastgen.jobs.results_file import scan_results

    contents = scan_results(Path(path))
    run = run_from_records(contents.header, list(contents.records.values()))
    if contents.bad_lines:
        run.notes.append(f"Line(s) {contents.bad_lines[:10]} of the file are not records and were ignored.")
    return run


def folder_labels(run: Run) -> list[str | None]:
    """Each record's label when it is one of the classes, else None: the label its source gave
    (a tar shard's `.cls`, a table's label column: the record's "label"), else an image file's
    parent folder's name (`folder_label`: never the folder a shard or a table sits in)."""
    names = set(run.classes)
    labels = [r.get("label") or folder_label(r.get("path", "")) for r in run.records]
    return [label if label in names else None for label in labels]


# -- figures ------------------------------------------------------------------------------------
def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def confusion_figure(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> bytes:
    import matplotlib.pyplot as plt

    k = len(classes)
    matrix = np.zeros((k, k), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    size = min(12, 2 + 0.45 * k)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    if k <= 30:
        axes.set_xticks(range(k), classes, rotation=90)
        axes.set_yticks(range(k), classes)
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    axes.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true (folder)")
    axes.set_title("Confusion matrix")
    return _figure_png(figure)


# Matplotlib's tab10 orange: drawn by the reliability diagram only, so a rendering test can find it.
CALIBRATED_COLOR = "#ff7f0e"


def reliability_figure(series: list[tuple[str, np.ndarray, np.ndarray]], title: str, bins: int = 10) -> bytes:
    """Accuracy against confidence per bin, one line per (name, confidence, correct) series: the
    first (the calibrated probabilities) in orange, the others (the plain softmax) in gray."""
    import matplotlib.pyplot as plt

    edges = np.linspace(0, 1, bins + 1)
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], ":", color="black", linewidth=1, label="perfect calibration")
    for n, (name, confidence, correct) in enumerate(series):
        which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
        used = [b for b in range(bins) if (which == b).any()]
        centres = [confidence[which == b].mean() for b in used]
        accuracy = [correct[which == b].mean() for b in used]
        sizes = [20 + 180 * (which == b).mean() for b in used]
        color = CALIBRATED_COLOR if n == 0 else "gray"
        axes.plot(centres, accuracy, "-", color=color, linewidth=2)
        axes.scatter(centres, accuracy, s=sizes, color=color, edgecolor="black", zorder=3, label=name)
    axes.set_xlabel("confidence (probability of the predicted class); marker area: share of images")
    axes.set_ylabel("accuracy")
    axes.set_xlim(-0.03, 1.03)
    axes.set_ylim(-0.03, 1.06)
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title(title, fontsize=9)
    return _figure_png(figure)


def histogram_figure(values: np.ndarray, xlabel: str, title: str) -> bytes:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.hist(values, bins=min(40, max(5, len(np.unique(values)))), color="#4878a8", edgecolor="white")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("images")
    axes.set_title(title)
    return _figure_png(figure)


def thumbnail(path: str, size: int = 72) -> str | None:
    """A base64 PNG thumbnail of the image at `path`, or None when it cannot be read."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = size / max(image.size)
            image = image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.NEAREST
            )
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return base64.b64encode(buffer.getvalue()).decode()
    except Exception:  # a moved or unreadable file leaves a blank cell, not a failed report
        return None


# -- the page -----------------------------------------------------------------------------------
def _img(name: str, data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode()
    return f'<figure><img id="{name}" alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}"></figure>'


def figures_folder(out: str | Path) -> Path:
    """Where `build_report` writes the PNG figures of the page `out`: `<out stem>_figures/` beside it."""
    out = Path(out)
    return out.with_name(out.stem + "_figures")


def build_report(
    run: Run,
    out: str | Path,
    *,
    labels: list[str | None] | None = None,
    calibration: Calibration | None = None,
    title: str = "fastgen results",
) -> Path:
    """Write the HTML page to `out` and its figures as PNG files into `<out stem>_figures/`.
    `labels` (one per record, None where unknown) default to none."""
    matplotlib = require("matplotlib", extra="report", purpose="the HTML report's figures")
    matplotlib.use("Agg")  # files only: no display needed
    out = Path(out)
    figures_dir = figures_folder(out)
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, bytes] = {}
    sections: list[str] = []
    notes = list(run.notes)
    scored = scored_records(run.records, run.classes, labels or [None] * len(run.records)) if run.records else None

    if scored is not None:
        predicted = scored.errors.argmin(axis=1)
        known = scored.labels >= 0
        if known.any():
            y, pred = scored.labels[known], predicted[known]
            accuracy = float(np.mean(y == pred))
            rows = "".join(
                f"<tr><td>{html.escape(c)}</td><td>{int((y == k).sum())}</td>"
                f"<td>{np.mean(pred[y == k] == k):.3f}</td></tr>"
                if (y == k).any()
                else ""
                for k, c in enumerate(scored.classes)
            )
            sections.append(
                f'<h2>Accuracy</h2><p id="accuracy">{accuracy:.4f} on {int(known.sum())} labelled image(s)</p>'
                f'<table id="per-class"><tr><th>class</th><th>images</th><th>accuracy</th></tr>{rows}</table>'
            )
            figures["confusion-matrix"] = confusion_figure(y, pred, scored.classes)
            sections.append(
                "<h2>Confusion matrix</h2>" + _img("confusion-matrix", figures["confusion-matrix"], "confusion matrix")
            )
            figures["reliability-diagram"], caption = _reliability(scored, known, calibration, notes)
            sections.append(
                "<h2>Reliability diagram</h2>"
                + _img("reliability-diagram", figures["reliability-diagram"], "reliability diagram")
                + f'<p id="reliability-caption">{html.escape(caption)}</p>'
            )
            if known.sum() < len(known):
                notes.append(f"{int((~known).sum())} scored image(s) have no label among the classes.")
        else:
            notes.append(
                "No labels: no image's folder name is one of the classes, so accuracy, the confusion "
                "matrix and the reliability diagram are left out."
            )
        undecided = _undecided_section(run, scored, predicted, known)
        if undecided:
            sections.append(undecided)
        figures["unet-evals"] = histogram_figure(scored.evals, "UNet evaluations", "Denoiser budget per image")
        figures["margins"] = histogram_figure(margins(scored.errors), "(second - best error) / best error", "Margins")
        sections.append(
            "<h2>Where the budget went</h2>" + _img("unet-evals", figures["unet-evals"], "UNet evaluations per image")
        )
        sections.append("<h2>Margins</h2>" + _img("margins", figures["margins"], "margins"))
        sections.append(_hardest_section(scored, predicted))

    run.notes[:] = notes  # the command prints them too
    for name, data in figures.items():
        (figures_dir / f"{name}.png").write_bytes(data)
    settings = json.dumps((run.header or {}).get("settings", {}), indent=2, default=str)
    model = html.escape(str((run.header or {}).get("model", "unknown model")))
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Model: {model}; {len(run.records)} scored image(s).</p>"
        + (f'<ul id="notes">{note_items}</ul>' if notes else "")
        + "".join(sections)
        + f'<h2>Settings</h2><pre id="settings">{html.escape(settings)}</pre></body></html>'
    )
    out.write_text(page, encoding="utf-8")
    return out


def _undecided_section(run: Run, scored, predicted: np.ndarray, known: np.ndarray) -> str:
    """How many images an adaptive run left undecided (budget spent, several classes not
    separated) and their share of the errors among the labelled ones; empty when there are none."""
    undecided_paths = {r.get("path") for r in run.records if r.get("decided") is False}
    if not undecided_paths:
        return ""
    undecided = np.array([path in undecided_paths for path in scored.paths])
    text = f"{int(undecided.sum())} of {len(undecided)} scored image(s) are undecided"
    if known.any():
        wrong = known & (predicted != scored.labels)
        share = f"{int((wrong & undecided).sum())} of the {int(wrong.sum())} error(s)"
        text += f"; {share} among the labelled images are undecided ones"
    return f'<h2>Undecided</h2><p id="undecided">{html.escape(text)}.</p>'


def _reliability(scored, known: np.ndarray, calibration: Calibration | None, notes: list[str]) -> tuple[bytes, str]:
    """The reliability diagram of the calibrated probabilities beside the plain softmax, on the
    labelled images the calibration was not fitted on (without a calibration file, of a
    temperature fitted on these labels), and its caption."""
    fitted = set(calibration.fitted_paths) if calibration is not None else set()
    measured = known & np.array([path not in fitted for path in scored.paths])
    if calibration is not None and not measured.any():
        notes.append("Every labelled image was used to fit the calibration: its reliability is drawn on them.")
        measured = known
    errors, y = scored.errors[measured], scored.labels[measured]
    if calibration is not None:
        p = calibration.probabilities_of(errors, scored.evals[measured])
        where = f"{int(measured.sum())} images not used for fitting" if fitted else f"{int(measured.sum())} images"
        how, title = "calibrated", f"Reliability on {where}"
        mismatch = calibration.class_mismatch(scored.classes)
        if mismatch:
            notes.append(mismatch[0].upper() + mismatch[1:] + ".")
    else:
        temperature = fit_temperature(errors, y) if len(set(y.tolist())) > 1 else 1.0
        p = softmax_of_errors(errors, temperature)
        how = f"temperature {temperature:.3g}"
        title = f"Reliability: temperature fitted on these {len(y)} labels (no calibration file given)"
    plain = softmax_of_errors(errors, 1.0)
    series = [
        (how, p.max(axis=1), p.argmax(axis=1) == y),
        ("plain softmax", plain.max(axis=1), plain.argmax(axis=1) == y),
    ]
    caption = f"{title}: {how} probabilities (orange) and the plain softmax over -errors (gray)."
    return reliability_figure(series, title), caption


def _hardest_section(scored, predicted: np.ndarray) -> str:
    """The images with the smallest margins (wrong ones first), with their top three classes."""
    wrong = (scored.labels >= 0) & (predicted != scored.labels)
    order = np.lexsort((margins(scored.errors), ~wrong))[:HARDEST]
    cells = []
    for i in order:
        top = np.argsort(scored.errors[i])[:3]
        lines = "<br>".join(f"{html.escape(scored.classes[k])}: {scored.errors[i, k]:.4g}" for k in top)
        label = scored.classes[scored.labels[i]] if scored.labels[i] >= 0 else "?"
        thumb = thumbnail(scored.paths[i])
        image = f'<img src="data:image/png;base64,{thumb}" alt="image">' if thumb else "(image not readable)"
        cells.append(
            f"<td>{image}<br><small>{html.escape(Path(scored.paths[i]).name)}<br>true: {html.escape(label)}"
            f"<br>{lines}</small></td>"
        )
    return f'<h2>Hardest images</h2><table id="hardest"><tr>{"".join(cells)}</tr></table>'
