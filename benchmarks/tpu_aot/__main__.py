"""`python -m benchmarks.tpu_aot` (see the package docstring)."""
import os

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

from benchmarks.tpu_aot.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
