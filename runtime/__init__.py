"""CuPy runtime: array backend, CUDA kernels, expert store, calibration (NumPy fallback on CPU)."""
