"""Where models run: ``cpu``, ``cuda`` or ``auto``; and whether work asks for a GPU (Dask resources)."""

from __future__ import annotations

from aloe.errors import AloeError


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
