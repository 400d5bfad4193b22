"""Compile Triton's CUDA launcher module into TRITON_CACHE_DIR while building the GPU image.

Triton builds one small C extension (`cuda_utils`, from its driver.c) with the C compiler the
first time it launches a kernel. The runtime image has no compiler, so the builder stage, which
has gcc, builds it once here and the runtime stage copies the cache. Triton's cache key for this
module is the C source plus the platform, so the copy is found at run time.

No GPU driver exists at build time: the builder links against an empty `libcuda.so.1` stub
(TRITON_LIBCUDA_PATH points at it). Loading the result therefore fails here with an undefined
symbol, after the module is already in the cache; at run time the real libcuda.so.1 that the
NVIDIA container runtime mounts resolves those symbols. CC must keep the stub in the module's
DT_NEEDED (gcc -Wl,--no-as-needed): the empty stub satisfies no symbol, so --as-needed, the
Debian default, would drop it and the module would not find libcuda at run time.

Triton's cache key includes platform.architecture(), which reads the output of `file` when that
command exists: the builder must agree with the runtime image, which has no `file`.
"""

import glob
import os
import shutil
import sys

from triton.backends.nvidia.driver import CudaUtils


def main() -> int:
    cache_dir = os.environ["TRITON_CACHE_DIR"]
    if shutil.which("file"):
        print("`file` is on PATH: the cache key would not match the runtime image's", file=sys.stderr)
        return 1
    try:
        CudaUtils()
    except ImportError as err:  # expected against the stub: the module is built and cached
        print(f"cuda_utils built; not loadable without a driver here ({err})")
    built = glob.glob(os.path.join(cache_dir, "*", "cuda_utils*.so"))
    if not built:
        print(f"no cuda_utils module under {cache_dir}", file=sys.stderr)
        return 1
    print("\n".join(built))
    return 0


if __name__ == "__main__":
    sys.exit(main())
