"""Plan a TPU slice from a CPU host with the real TPU compiler: per-chip memory, compile time, FLOPs.

    TPU_SKIP_MDS_QUERY=1 python -m benchmarks.tpu_aot --topology v4:2x2x4 --model llama3_8b \
        --method wind_sq --batch 64 --length 1024 [--mesh D,F,T] [--remat full] [--attention splash] [--json PATH]
    ... --decode --batch 64 --cache-length 2048 --topology v5e:2x4 --mesh 1,1,8      # one decode step
    ... --iteration --judge llama3_8b --samples 2 --prompt-length 512 --max-new-tokens 512 --batch 64
                                                  # every program of one outer iteration (iteration.py)
    ... --platform cpu --topology 8 ...           # the same programs for 8 local CPU devices

single.py plans one program (the policy step or the sampler's decode step), iteration.py every program of
an outer WIND iteration; costs.py holds the chips, the compiler's figures and the per-layer extrapolation.
Every time and FLOP count is an ESTIMATE of XLA's cost model, never a measurement on a TPU.
"""
from benchmarks.tpu_aot.cli import main, model_config, parse_args
from benchmarks.tpu_aot.costs import CHIPS, Chip, chip_of, extrapolate

__all__ = ["CHIPS", "Chip", "chip_of", "extrapolate", "main", "model_config", "parse_args"]
