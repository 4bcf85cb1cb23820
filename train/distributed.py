"""One code path for 1 or N processes: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def available_devices() -> list[str]:
    """The devices this machine has, as ``--device`` names them."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def _present(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    if device.type == "mps":
        return torch.backends.mps.is_available() and not device.index
    module = getattr(torch, device.type, None)  # cuda, xpu, ...: the same two functions
    try:
        return bool(module.is_available()) and (device.index is None or device.index < module.device_count())
    except Exception:  # noqa: BLE001  (no such backend, or it cannot initialise: not available either way)
        return False


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``name`` as a device ("auto": this process's GPU, else the CPU). A name this machine has no
    device for is refused here (ValueError: one line naming the available ones), not as a driver
    traceback at the first tensor moved there."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device name; available: {', '.join(available_devices())}") from None
    if not _present(device):
        raise ValueError(f"--device {name!r} is not available on this machine; available: {', '.join(available_devices())}")
    return device


def init_distributed(device_name: str = "auto") -> DistEnv:
    """Join the process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
