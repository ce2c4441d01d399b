"""Fused GPU kernels for decoding; each module imports its compiler lazily, so a CPU install needs none."""
