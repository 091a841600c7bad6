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
from fastgen.optional import require

HARDEST = 12


@dataclass
class Run:
    """A results file's valid content, and what was left out of it and why."""

    header: dict[str, Any] | None
    records: list[dict[str, Any]]  # scored records, latest per path
    classes: list[str]
    notes: list[str] = field(default_factory=list)


def run_from_records(header: dict[str, Any] | None, records: list[dict[str, Any]]) -> Run:
    """Split `records` into scored ones and notes on the rest (errors, records with no score)."""
    scored, notes, errors, empty = [], [], 0, 0
    for record in records:
        if "error" in record:
            errors += 1
            continue
        scores = record.get("scores")
        if not isinstance(scores, dict) or not any(isinstance(v, (int, float)) for v in scores.values()):
            empty += 1
            continue
        scored.append(record)
    if errors:
        notes.append(f"{errors} error record(s) (images that could not be classified) are not in the figures.")
    if empty:
        notes.append(f"{empty} record(s) without any finite score are left out.")
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
    """Each record's parent folder name when it is one of the classes, else None."""
    names = set(run.classes)
    labels = [Path(r.get("path", "")).parent.name for r in run.records]
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


def reliability_figure(confidence: np.ndarray, correct: np.ndarray, title: str, bins: int = 10) -> bytes:
    import matplotlib.pyplot as plt

    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    accuracy = [correct[which == b].mean() if (which == b).any() else np.nan for b in range(bins)]
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.bar(edges[:-1], accuracy, width=1 / bins, align="edge", edgecolor="black", label="accuracy in bin")
    axes.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    axes.set_xlabel("confidence (probability of the predicted class)")
    axes.set_ylabel("accuracy")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left")
    axes.set_title(title)
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
    figures_dir = out.with_name(out.stem + "_figures")
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
            if calibration is not None:
                p, how = calibration.probabilities_of(scored.errors[known], scored.evals[known]), "calibrated"
            else:
                temperature = fit_temperature(scored.errors[known], y) if len(set(y.tolist())) > 1 else 1.0
                p = softmax_of_errors(scored.errors[known], temperature)
                how = f"temperature {temperature:.3g} fitted on these labels (no calibration file given)"
            figures["reliability-diagram"] = reliability_figure(
                p.max(axis=1), p.argmax(axis=1) == y, f"Reliability ({how})"
            )
            sections.append(
                "<h2>Reliability diagram</h2>"
                + _img("reliability-diagram", figures["reliability-diagram"], "reliability diagram")
            )
            if known.sum() < len(known):
                notes.append(f"{int((~known).sum())} scored image(s) have no label among the classes.")
        else:
            notes.append(
                "No labels: no image's folder name is one of the classes, so accuracy, the confusion "
                "matrix and the reliability diagram are left out."
            )
        figures["unet-evals"] = histogram_figure(scored.evals, "UNet evaluations", "Denoiser budget per image")
        figures["margins"] = histogram_figure(margins(scored.errors), "(second - best error) / best error", "Margins")
        sections.append(
            "<h2>Where the budget went</h2>" + _img("unet-evals", figures["unet-evals"], "UNet evaluations per image")
        )
        sections.append("<h2>Margins</h2>" + _img("margins", figures["margins"], "margins"))
        sections.append(_hardest_section(scored, predicted))

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
