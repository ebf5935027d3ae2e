"""torchrun's process group, or a single process: the device of this process and the sums over ranks."""
from __future__ import annotations

import os

import torch

from pipeline.output import resolve_device


class Dist:
    """torchrun's process group, or a single process. Only rank 0 writes files and prints."""

    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        want_cuda = resolve_device(device_arg).type == "cuda"
        self.device = torch.device(f"cuda:{self.local_rank}" if want_cuda else "cpu")
        if want_cuda:
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True   # fixed input shapes: let cuDNN time its kernels once
        if self.enabled:
            import torch.distributed as dist
            dist.init_process_group("nccl" if want_cuda else "gloo")
            if not want_cuda:   # share the cores between the local processes instead of oversubscribing
                local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """Sum numbers over ranks."""
        if not self.enabled:
            return list(values)
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.destroy_process_group()
