"""Discriminative baselines for `builtin:animals`, on exactly its split and its 16x16 images.

* `logreg`: logistic regression on standardised pixels; C by 5-fold cross-validation.
* `svc`: an RBF support-vector classifier on standardised pixels; C and gamma by 5-fold
  cross-validation.
* `cnn`: a small convolutional network (four 3x3 convolutions, two poolings, two linear layers),
  trained from seed 0 with Adam and the diffusion model's augmentation (left-right mirroring with
  probability 0.5), early-stopped on a validation fifth carved (stratified) from the training split.

Every choice is made on the training split alone; the held-out split is predicted once, at the
end. One command fits all three:

    python -m training.train_animals_baselines --threads 1

It writes `fastgen/builtin/animals/baselines.json` (held-out accuracy of each, settings, wall and
CPU seconds, the command, the CPU, and each baseline's held-out predictions, one digit per image in the order
of `heldout.npz`, so the demo can score the same subset it classifies) and the fitted models to
`training/animals_baselines/`: the scaler and weights of the logistic regression (`logreg.npz`),
what the SVC's decision function needs (`svc.npz`: its support vectors as the uint8 training
images they are, dual coefficients, intercepts, gamma and the scaler: 0.7 MB, where the
scikit-learn pickle holds its 3,999 support vectors as float64, over 8 MB), and the CNN (`cnn.safetensors`,
`cnn.json`). `baseline_predictions(name, images)` predicts with them, without scikit-learn, on any
uint8 images (16x16, or larger: brought to 16x16 by the engine's resize first).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastgen.builtin.animals_data import CLASS_NAMES, HELDOUT_FILE, IMAGE_SIZE, SPLIT_SEED
from training.animals_data import animal_split, to_model_size
from training.train_digits import cpu_name

BASELINE_DIR = Path(__file__).resolve().parent / "animals_baselines"
BASELINES_JSON = HELDOUT_FILE.parent / "baselines.json"
NAMES = ("logreg", "svc", "cnn")
COMMAND = "python -m training.train_animals_baselines --threads 1"
CV_FOLDS = 5
LOGREG_GRID = {"C": [0.001, 0.01, 0.1, 1.0]}
SVC_GRID = {"C": [1.0, 10.0, 100.0], "gamma": [1 / 512, 1 / 256, 1 / 128]}  # 1/256: "scale" on standardised pixels
CNN_SETTINGS = {
    "channels": [32, 64],
    "hidden": 128,
    "dropout": 0.3,
    "lr": 1e-3,
    "batch_size": 64,
    "max_epochs": 60,
    "patience": 8,
    "validation_fraction": 0.2,
    "flip_prob": 0.5,
    "seed": 0,
}


def features(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 16, 16] (or larger, resized as the engine does) -> float64 [N, 256] in [0, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        images = to_model_size(images)
    return images.reshape(len(images), -1).astype(np.float64) / 255.0


# ----------------------------------------------------------------------------- scikit-learn


def cross_validated(estimator: Any, grid: dict[str, list], x: np.ndarray, y: np.ndarray) -> Any:
    """A standardise-then-`estimator` pipeline refitted on all of x with the grid's best setting."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), estimator)
    step = pipeline.steps[-1][0]
    search = GridSearchCV(
        pipeline,
        {f"{step}__{key}": values for key, values in grid.items()},
        cv=StratifiedKFold(CV_FOLDS, shuffle=True, random_state=SPLIT_SEED),
        n_jobs=1,
    )
    return search.fit(x, y)


def cv_summary(search: Any) -> dict[str, Any]:
    results = search.cv_results_
    return {
        "folds": CV_FOLDS,
        "best": {key.split("__", 1)[1]: value for key, value in search.best_params_.items()},
        "mean_accuracy": {
            json.dumps({k.split("__", 1)[1]: v for k, v in params.items()}): round(float(score), 4)
            for params, score in zip(results["params"], results["mean_test_score"])
        },
    }


def save_logreg(search: Any, path: Path) -> None:
    scaler, model = search.best_estimator_[0], search.best_estimator_[-1]
    np.savez(path, mean=scaler.mean_, scale=scaler.scale_, coef=model.coef_, intercept=model.intercept_)


def save_svc(search: Any, train_images: np.ndarray, train_index: np.ndarray, path: Path) -> None:
    scaler, model = search.best_estimator_[0], search.best_estimator_[-1]
    np.savez_compressed(
        path,
        mean=scaler.mean_,
        scale=scaler.scale_,
        support_images=train_images[model.support_],
        support_source_index=train_index[model.support_],
        n_support=model.n_support_,
        dual_coef=model.dual_coef_,
        intercept=model.intercept_,
        gamma=np.float64(model.gamma),
    )


def logreg_predict(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    scores = (x - params["mean"]) / params["scale"] @ params["coef"].T + params["intercept"]
    return scores.argmax(axis=1)


def svc_predict(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """libsvm's one-against-one vote: for each class pair (i, j), i < j, the sign of
    sum(coef * K(sv, x)) over the two classes' support vectors plus the pair's intercept; the
    class with most votes wins, the lowest index on a tie."""
    scale = lambda z: (z - params["mean"]) / params["scale"]
    sv, z = scale(features(params["support_images"])), scale(x)
    sq_dist = (z**2).sum(1)[:, None] + (sv**2).sum(1)[None] - 2 * z @ sv.T
    kernel = np.exp(-params["gamma"] * np.maximum(sq_dist, 0))  # [n, n_sv]
    starts = np.concatenate([[0], np.cumsum(params["n_support"])])
    coef, n_classes = params["dual_coef"], len(params["n_support"])
    votes = np.zeros((len(x), n_classes), dtype=np.int64)
    pair = 0
    for i in range(n_classes):
        for j in range(i + 1, n_classes):
            si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
            value = kernel[:, si] @ coef[j - 1, si] + kernel[:, sj] @ coef[i, sj] + params["intercept"][pair]
            votes[:, i] += value > 0
            votes[:, j] += value <= 0
            pair += 1
    return votes.argmax(axis=1)


# ----------------------------------------------------------------------------- the CNN


class AnimalCNN(nn.Module):
    """conv-conv-pool twice (16 -> 8 -> 4), then two linear layers."""

    def __init__(self, channels: list[int], hidden: int, dropout: float, n_classes: int = len(CLASS_NAMES)):
        super().__init__()
        layers: list[nn.Module] = []
        previous = 1
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)]
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            previous = width
        side = IMAGE_SIZE // 2 ** len(channels)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(previous * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def cnn_input(x: np.ndarray) -> torch.Tensor:
    """float [N, 256] in [0, 1] -> [N, 1, 16, 16] in [-1, 1], the diffusion model's scale."""
    return torch.from_numpy(x.astype(np.float32)).view(-1, 1, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1


@torch.no_grad()
def cnn_predict(model: AnimalCNN, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    model.eval()
    inputs = cnn_input(x)
    return torch.cat([model(inputs[i : i + batch]).argmax(1) for i in range(0, len(inputs), batch)]).numpy()


def train_cnn(x: np.ndarray, y: np.ndarray, settings: dict[str, Any]) -> tuple[AnimalCNN, dict[str, Any]]:
    """Fit on a stratified part of (x, y), keep the weights of the epoch best on the rest."""
    from sklearn.model_selection import train_test_split

    torch.manual_seed(settings["seed"])
    gen = torch.Generator().manual_seed(settings["seed"])
    fit_idx, val_idx = train_test_split(
        np.arange(len(y)), test_size=settings["validation_fraction"], random_state=settings["seed"], stratify=y
    )
    inputs, labels = cnn_input(x[fit_idx]), torch.from_numpy(y[fit_idx])
    model = AnimalCNN(settings["channels"], settings["hidden"], settings["dropout"])
    opt = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    best, best_state, best_epoch, history = -1.0, None, 0, []
    for epoch in range(settings["max_epochs"]):
        model.train()
        order = torch.randperm(len(labels), generator=gen)
        for start in range(0, len(order), settings["batch_size"]):
            idx = order[start : start + settings["batch_size"]]
            batch = inputs[idx]
            flip = torch.rand(len(idx), generator=gen) < settings["flip_prob"]
            batch[flip] = batch[flip].flip(-1)
            loss = nn.functional.cross_entropy(model(batch), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        accuracy = float((cnn_predict(model, x[val_idx]) == y[val_idx]).mean())
        history.append(round(accuracy, 4))
        print(f"cnn epoch {epoch + 1:3d}: validation accuracy {accuracy:.4f}", flush=True)
        if accuracy > best:
            best, best_epoch = accuracy, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch + 1 - best_epoch >= settings["patience"]:
            break
    model.load_state_dict(best_state)
    summary = {"fit_images": len(fit_idx), "validation_images": len(val_idx), "best_epoch": best_epoch}
    summary.update({"validation_accuracy": round(best, 4), "validation_history": history})
    return model, summary


# ----------------------------------------------------------------------------- predictions


@cache
def _load(name: str, folder: str) -> Any:
    folder_path = Path(folder)
    if name == "cnn":
        from safetensors.torch import load_file

        settings = json.loads((folder_path / "cnn.json").read_text(encoding="utf-8"))
        model = AnimalCNN(settings["channels"], settings["hidden"], settings["dropout"])
        model.load_state_dict(load_file(folder_path / "cnn.safetensors"))
        return model
    with np.load(folder_path / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def baseline_predictions(name: str, images_uint8: np.ndarray, *, folder: str | Path = BASELINE_DIR) -> np.ndarray:
    """Predicted labels (indices into CLASS_NAMES) of the fitted baseline `name` ("logreg",
    "svc" or "cnn") on uint8 images [N, H, W] (bright on dark, as the data)."""
    if name not in NAMES:
        raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(NAMES)}")
    x = features(images_uint8)
    model = _load(name, str(Path(folder).resolve()))
    if name == "cnn":
        return cnn_predict(model, x)
    return (logreg_predict if name == "logreg" else svc_predict)(model, x)


# ----------------------------------------------------------------------------- the run


class Clock:
    """Wall and CPU seconds since the last lap: on shared cores the wall time counts the other
    processes too, the process's CPU time does not."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> dict[str, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        lap = {"seconds": round(wall - self.wall, 1), "cpu_seconds": round(cpu - self.cpu, 1)}
        self.wall, self.cpu = wall, cpu
        return lap


def fit_all(x: np.ndarray, y: np.ndarray, split: Any, folder: Path) -> dict[str, dict[str, Any]]:
    """Fit the three baselines on the training split and save them to `folder`; returns each
    one's settings, choice and seconds."""
    from safetensors.torch import save_file
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    folder.mkdir(parents=True, exist_ok=True)
    fitted: dict[str, dict[str, Any]] = {}
    clock = Clock()
    search = cross_validated(LogisticRegression(max_iter=5000), LOGREG_GRID, x, y)
    save_logreg(search, folder / "logreg.npz")
    fitted["logreg"] = {
        "description": "logistic regression (multinomial, lbfgs) on standardised pixels",
        "settings": {"grid": LOGREG_GRID, "max_iter": 5000},
        "cross_validation": cv_summary(search),
        **clock.lap(),
        "sklearn": search,
    }
    search = cross_validated(SVC(kernel="rbf"), SVC_GRID, x, y)
    train_images, _ = split.part("train")
    save_svc(search, train_images, split.train_index, folder / "svc.npz")
    fitted["svc"] = {
        "description": "RBF support-vector classifier (one-against-one) on standardised pixels",
        "settings": {"grid": SVC_GRID, "kernel": "rbf"},
        "cross_validation": cv_summary(search),
        "support_vectors": int(search.best_estimator_[-1].support_.size),
        **clock.lap(),
        "sklearn": search,
    }
    model, summary = train_cnn(x, y, CNN_SETTINGS)
    save_file(model.state_dict(), folder / "cnn.safetensors")
    (folder / "cnn.json").write_text(json.dumps(CNN_SETTINGS, indent=2) + "\n", encoding="utf-8")
    fitted["cnn"] = {
        "description": "CNN: 2 x (conv3x3-ReLU-conv3x3-ReLU-maxpool) -> dropout -> linear-ReLU -> linear; "
        "Adam, cross-entropy, left-right mirroring; the epoch best on validation",
        "settings": CNN_SETTINGS,
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": summary,
        **clock.lap(),
    }
    return fitted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cache-dir", default=None, help="where the Animal-Shape wheel is kept")
    parser.add_argument("--out", type=Path, default=BASELINES_JSON, help="the baselines' JSON report")
    parser.add_argument("--models", type=Path, default=BASELINE_DIR, help="folder for the fitted baselines")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    split = animal_split(args.cache_dir)
    train_x, train_y = split.part("train")
    test_x, test_y = split.part("heldout")
    fitted = fit_all(features(train_x), train_y, split, args.models)

    report: dict[str, Any] = {}
    for name, entry in fitted.items():
        predicted = baseline_predictions(name, test_x, folder=args.models)
        search = entry.pop("sklearn", None)
        if search is not None:
            # The saved parameters, predicted without scikit-learn, against the fitted estimator:
            # only a decision value within rounding of zero may differ.
            entry["sklearn_disagreements"] = int((predicted != search.predict(features(test_x))).sum())
            if entry["sklearn_disagreements"] > 2:
                raise AssertionError(f"the saved {name} predicts otherwise than the fitted one")
        report[name] = {
            "heldout_accuracy": round(float((predicted == test_y).mean()), 4),
            "heldout_errors": int((predicted != test_y).sum()),
            **entry,
            # One digit per held-out image (the class index), in the order of heldout.npz.
            "heldout_predictions": "".join(str(int(p)) for p in predicted),
        }
        print(f"{name}: held-out accuracy {report[name]['heldout_accuracy']:.4f}", flush=True)
    import sklearn

    document = {
        "command": COMMAND if args.threads == 1 else COMMAND.replace("--threads 1", f"--threads {args.threads}"),
        "recorded_by": "training/train_animals_baselines.py",
        "split": {
            "resolution": f"{IMAGE_SIZE}x{IMAGE_SIZE}",
            "split_seed": split.stats["split_seed"],
            "train_images": len(train_y),
            "heldout_images": len(test_y),
        },
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "sklearn": sklearn.__version__, "python": platform.python_version()},
        "models_folder": "training/animals_baselines",
        "baselines": report,
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
