"""Model folders: the real CLIP tokenizer, every kind through from_pretrained, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import CLIPTokenizer

from fastgen import DiffusionClassifier, ModelLoadError
from fastgen.models import load_adapter


def test_latent_model_uses_the_real_clip_vocabulary(model_dirs):
    tokenizer = CLIPTokenizer.from_pretrained(model_dirs["latent-text"], subfolder="tokenizer")
    assert len(tokenizer) == 49408
    # ids of the public CLIP vocabulary: <start> a photo of a cat . <end>
    ids = tokenizer("a photo of a cat.").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 269, 49407]


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("latent-text", ("latent-text", (4, 8, 8), 16)),
        ("latent-text-v", ("latent-text", (4, 8, 8), 16)),
        ("pixel-text", ("pixel-text", (3, 8, 8), 8)),
        ("dit", ("class-conditional", (4, 8, 8), 16)),
        ("label-unet", ("class-conditional", (3, 8, 8), 8)),
    ],
)
def test_each_kind_loads_behind_its_adapter(model_dirs, kind, expected):
    adapter = load_adapter(model_dirs[kind], local_files_only=True)
    assert (adapter.kind, adapter.x0_shape, adapter.image_size) == expected
    assert adapter.prediction_type == ("v_prediction" if kind == "latent-text-v" else "epsilon")
    assert adapter.alphas_cumprod.shape == (1000,) and adapter.alphas_cumprod[0] > adapter.alphas_cumprod[-1]


def test_prompt_embeddings_are_computed_once_per_classifier(model_dirs):
    clf = DiffusionClassifier.from_pretrained(
        model_dirs["latent-text"], classes=["cat", "dog"], templates=["a {}", "the {}"], device="cpu"
    )
    assert clf.conditions.shape == (4, 12, 32)
    calls = []
    clf.adapter.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    clf.classify([torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)])
    assert calls == []


@pytest.mark.parametrize(
    "kind, component", [("latent-text", "vae"), ("pixel-text", "tokenizer"), ("dit", "transformer")]
)
def test_a_missing_component_is_named(model_dirs, tmp_path, kind, component):
    broken = tmp_path / "broken"
    shutil.copytree(model_dirs[kind], broken)
    shutil.rmtree(broken / component)
    with pytest.raises(ModelLoadError, match=f"missing the component '{component}/'"):
        load_adapter(broken, local_files_only=True)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no model_index.json"):
        load_adapter(tmp_path, local_files_only=True)
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "X", "scheduler": ["diffusers", "DDPMScheduler"]})
    )
    with pytest.raises(ModelLoadError, match="neither a 'unet' nor a 'transformer'"):
        load_adapter(tmp_path, local_files_only=True)


def test_an_unknown_hub_id_fails_offline_with_advice():
    with pytest.raises(ModelLoadError, match="cannot read model_index.json"):
        load_adapter("nobody/no-such-model", local_files_only=True)


def test_a_component_class_the_library_lacks_is_named(model_dirs, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(model_dirs["pixel-text"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNetThatNoReleaseHas"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"diffusers\.UNetThatNoReleaseHas, which diffusers \S+ does not have"):
        load_adapter(folder, local_files_only=True)


def test_a_broken_import_names_the_module_file_and_error(tmp_path):
    """A folder named like a package that transformers imports, first on sys.path: the error
    says which module came from which file and what the import said, not "upgrade"."""
    import subprocess
    import sys

    shadow = tmp_path / "kernels"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("# not the package transformers wants\n")
    probe = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from fastgen.models.loading import ModelLoadError, component_class\n"
        "try:\n"
        "    component_class('diffusers', 'AutoencoderKL', 'vae')\n"
        "except ModelLoadError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    print('loaded')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    message = done.stdout.strip().splitlines()[-1]
    if message == "loaded":
        pytest.skip("this transformers/diffusers release does not import a top-level `kernels`")
    assert "component 'vae' needs class diffusers.AutoencoderKL" in message
    assert "module 'kernels'" in message and str(shadow / "__init__.py") in message
    assert "ImportError: cannot import name" in message and "upgrade" not in message


def test_embedded_text_encoders_load_in_every_allowed_transformers_release():
    """transformers 4 loads a CLIPTextModel only from weights named with its `text_model.`
    prefix (without it the encoder is silently random); transformers 5 loads either form."""
    from pathlib import Path

    from safetensors import safe_open

    import fastgen.builtin

    files = sorted(Path(fastgen.builtin.__file__).parent.glob("*/text_encoder*/model.safetensors"))
    assert len(files) >= 4
    for path in files:
        with safe_open(str(path), "pt") as handle:
            stray = [k for k in handle.keys() if not k.startswith(("text_model.", "text_projection."))]  # noqa: SIM118 (a safetensors handle, not a dict)
        assert not stray, f"{path}: {stray[:3]} (run python -m training.portable_weights on its model folder)"
