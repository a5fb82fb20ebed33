"""Shared fixtures; tests marked `gpu` skip unless CuPy sees a CUDA device."""

import pytest

from moespeq.spec import ModelSpec


def _cuda_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any failure to reach CUDA means "no GPU here"
        return False


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs CUDA and CuPy (run with -m gpu on the H200)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def tiny_spec() -> ModelSpec:
    """A 2-layer, 4-expert, top-2 geometry: small enough for exhaustive checks."""
    return ModelSpec(name="tiny", arch="mixtral", layers=2, experts=4, top_k=2, hidden=128, moe_ffn=256,
                     heads=2, kv_heads=2, head_dim=64, vocab=100)
