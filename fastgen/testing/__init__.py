"""Tiny random-weight models built from config, saved in the real folder layout.

Used by the tests and the CPU benchmarks: each builder writes a folder that loads through the
same `from_pretrained` path a real checkpoint takes. Nothing here touches the network (the CLIP
vocabulary comes from `open-clip-torch`).
"""

from fastgen.testing.tiny_flow import make_flux, make_sd3
from fastgen.testing.tiny_models import (
    make_dit,
    make_label_unet,
    make_latent_text,
    make_pixel_text,
)

__all__ = ["make_dit", "make_flux", "make_label_unet", "make_latent_text", "make_pixel_text", "make_sd3"]
