"""Where models run: ``cpu``, ``cuda`` or ``auto``; whether work asks for a GPU (Dask resources); BLAS threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aloe.errors import AloeError


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """NumPy/SciPy BLAS on one thread while the block runs (torch's own threads are left alone).

    ``FrechetCellFilter`` computes matrix exponentials and logarithms of 3x3 matrices at every step; with every
    core's OpenBLAS thread spinning on a busy machine each solve took 15 ms instead of microseconds (one EMT
    relaxation 3 s instead of 0.2 s; 10x slower than the model call on a 2-core machine).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn, a dependency
        yield
        return
    import scipy.linalg  # noqa: F401  (loads SciPy's own OpenBLAS now: a limit covers only loaded libraries)

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def resolve_device(device: str | None) -> str:
    """``"auto"``/``None`` -> ``"cuda"`` if torch sees a GPU else ``"cpu"``; anything else unchanged.

    Raises
    ------
    AloeError
        If a CUDA device is asked for and torch sees none.
    """
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise AloeError(
                f"device {device!r}: torch {torch.__version__} sees no CUDA GPU (use device 'cpu' or 'auto')"
            )
    return device


def wants_gpu(device: str | None) -> bool:
    """Whether work on ``device`` should go to GPU workers (``cuda``, ``cuda:N``, or ``auto``).

    Decided from the setting, without importing torch: the client of a cluster may have no GPU while its
    workers do.
    """
    return device is not None and (device == "auto" or str(device).startswith("cuda"))
