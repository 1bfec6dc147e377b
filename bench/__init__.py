"""clip-rt benchmarks against PyTorch/open_clip: ``python -m bench`` (see bench/README.md)."""
