"""What a CPU-only demo server leaves out of its process before PyTorch is imported.

torchvision imports `torch._dynamo`, which imports Triton, the GPU kernel compiler, when it is installed (the
CUDA build of torch brings it): 74 MB of resident memory and 0.3 s of start-up in a server that runs eager
models on the CPU and never compiles a kernel (issue 16: the idle app held 907 MB). Marking the module as
absent makes `import triton` fail as if it were not installed, which torch handles (`has_triton()` is then
False); nothing else changes.
"""

from __future__ import annotations

import sys


def leave_out_gpu_compiler() -> bool:
    """Keep Triton out of this process; call before importing torch. False (nothing done) once it is in."""
    if sys.modules.get("triton") is not None:
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # `import triton` now raises ImportError
    return True
