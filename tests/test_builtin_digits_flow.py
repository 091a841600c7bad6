"""The embedded flow-matching model: an SD3 transformer in the SD3 folder layout, loaded offline,
classifying held-out digits through the real SD3 code path."""

from __future__ import annotations

import json

import numpy as np
from accuracy_floors import DIGITS_FLOW_ERROR_RATE, accuracy_floor

from fastgen import DiffusionClassifier
from fastgen.builtin import BUILTIN_MODELS
from fastgen.builtin.digits_data import CLASS_NAMES, digits_split, to_pil
from fastgen.commands.main import main


def test_builtin_digits_flow_is_an_sd3_model_in_the_sd3_layout():
    folder = BUILTIN_MODELS["digits-flow"]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert index["transformer"] == ["diffusers", "SD3Transformer2DModel"]
    assert index["text_encoder_3"] == [None, None] and index["vae"] == [None, None]
    weights = list(folder.rglob("*.safetensors"))
    assert len(weights) == 3 and sum(p.stat().st_size for p in weights) < 10 * 2**20
    clf = DiffusionClassifier.from_pretrained("builtin:digits-flow", device="cpu", local_files_only=True)
    assert clf.adapter.kind == "sd3" and clf.adapter.schedule.kind == "flow"
    assert clf.adapter.x0_shape == (1, 8, 8) and clf.classes.names == tuple(CLASS_NAMES)
    assert clf.config.flow_timesteps is not None and clf.config.flow_weighting is not None


def test_held_out_digits_are_classified_by_the_flow_score():
    _, _, test_x, test_y = digits_split()
    clf = DiffusionClassifier.from_pretrained(
        "builtin:digits-flow", device="cpu", policy="exhaustive", policy_options={"n_samples": 16}, batch_size=480
    )
    results = clf.classify([to_pil(image) for image in test_x[:60]])
    predictions = np.array([CLASS_NAMES.index(r.prediction) for r in results])
    # measured 59/60; the floor (55/60) is the held-out error rate's 99.9% binomial bound
    assert (predictions == test_y[:60]).mean() >= accuracy_floor(60, DIGITS_FLOW_ERROR_RATE)


def test_demo_runs_on_the_flow_model(capsys):
    assert main(["demo", "--model", "builtin:digits-flow", "--n-images", "8", "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _, _, _, test_y = digits_split()
    assert report["images"] == 8 and report["accuracy"] == np.mean(np.array(report["predictions"]) == test_y[:8])
    # the floor (6/8) is the held-out error rate's 99.9% binomial bound on 8 images
    assert report["accuracy"] >= accuracy_floor(8, DIGITS_FLOW_ERROR_RATE) and report["unet_evals_per_image"] >= 10
