"""Triton kernels for the work around the denoiser, installed as `fastgen.kernels`."""
