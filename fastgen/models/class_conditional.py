"""Class-conditional models: `DiTTransformer2DModel` with a VAE, or `UNet2DModel` with class
labels (pixel space, or latent when the folder has `vae/`). A class is a label index.

Label indices come from, in order: the class spec (a name -> index mapping or a CSV's
`classidx`), the model's `id2label` (names, or any comma-separated synonym), or the class's
position in the list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastgen.inputs.classes import ClassSpec
from fastgen.models.base import Adapter, DiTDenoiser, LabelUNetDenoiser, sample_hw, vae_scale
from fastgen.models.loading import load_component, present, require_components


def label_lookup(id2label: dict[Any, str] | None) -> dict[str, int]:
    lookup: dict[str, int] = {}
    for key, value in (id2label or {}).items():
        for synonym in str(value).split(","):
            lookup.setdefault(synonym.strip(), int(key))
    return lookup


class ClassConditionalAdapter(Adapter):
    kind = "class-conditional"

    def __init__(self, model, index, folder: Path | None, *, device, dtype, load: dict):
        super().__init__(device=device, dtype=dtype)
        backbone = "transformer" if present(index, "transformer") else "unet"
        needs = (backbone, "scheduler") + (("vae",) if backbone == "transformer" or present(index, "vae") else ())
        require_components(index, folder, needs, "class-conditional", str(model))
        net = load_component(model, index, backbone, dtype=dtype, **load).to(device).eval()
        scheduler = load_component(model, index, "scheduler", **load)
        self.set_diffusion_schedule(scheduler)
        self.vae = None
        if "vae" in needs:
            self.vae = load_component(model, index, "vae", dtype=dtype, **load).to(device).eval()
        height, width = sample_hw(net.config.sample_size)
        channels = int(net.config.in_channels)
        if backbone == "transformer":
            self.denoiser = DiTDenoiser(net, channels)
            self.num_labels = int(net.config.num_embeds_ada_norm)
        else:
            self.denoiser = LabelUNetDenoiser(net)
            self.num_labels = int(net.config.num_class_embeds or 0)
            if self.num_labels == 0:
                raise ValueError(f"UNet2DModel of {model!r} has no class embedding (num_class_embeds)")
        self._x0_shape = (channels, height, width)
        if self.vae is not None:
            scale = vae_scale(self.vae)
            self.image_hw = (height * scale, width * scale)
            self.image_channels = int(self.vae.config.in_channels)
            self.scaling_factor = float(self.vae.config.scaling_factor)
        else:
            self.image_hw, self.image_channels = (height, width), channels
        self.labels_by_name = label_lookup(index.get("id2label"))

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return pixels.to(self.device, torch.float32) * 2 - 1
        latents = self.vae.encode(pixels.to(self.device, self.dtype) * 2 - 1).latent_dist.mean
        return latents.float() * self.scaling_factor

    def class_labels(self, classes: ClassSpec) -> list[int]:
        if classes.labels is not None:
            labels = list(classes.labels)
        elif self.labels_by_name and all(n in self.labels_by_name for n in classes.names):
            labels = [self.labels_by_name[n] for n in classes.names]
        else:
            labels = list(range(len(classes)))
        bad = [label for label in labels if not 0 <= label < self.num_labels]
        if bad:
            raise ValueError(
                f"class label indices {bad} are outside this model's {self.num_labels} labels; "
                "give classes as a name -> index mapping or a CSV with classidx"
            )
        return labels

    def encode_conditions(self, classes: ClassSpec) -> torch.Tensor:
        # One condition per prompt entry; every prompt of a class carries the class's label.
        labels = self.class_labels(classes)
        per_prompt = [labels[k] for k in classes.prompt_class]
        return torch.tensor(per_prompt, dtype=torch.int64, device=self.device)
