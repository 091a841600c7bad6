"""Every kind of image input means the same image: a 2-D tensor is one grey image as a 2-D array
is, and transparency is composited on white whether it comes as a PIL image, an array or a tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastgen import DiffusionClassifier
from fastgen.inputs.images import ImageError


@pytest.fixture(scope="module")
def digits():
    return DiffusionClassifier.from_pretrained(
        "builtin:digits", device="cpu", policy="exhaustive", policy_options={"n_samples": 4}, local_files_only=True
    )


def test_a_2d_tensor_is_one_grey_image_like_a_2d_array(digits):
    grey = np.random.default_rng(8).random((8, 8), dtype=np.float32)
    from_tensor = digits.classify(torch.from_numpy(grey), on_error="return")
    from_array = digits.classify(grey, on_error="return")
    assert len(from_tensor) == 1 and not isinstance(from_tensor[0], ImageError)
    assert np.allclose(from_tensor[0].errors, from_array[0].errors)
    assert from_tensor[0].prediction == from_array[0].prediction
