"""Test set-up: 8 fake CPU devices, set before jax is imported.

float64 is opt-in per test through the `x64` fixture (jax.enable_x64), so the default dtype stays float32.
"""
import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run the test body with jax_enable_x64 on."""
    with jax.enable_x64(True):
        yield
