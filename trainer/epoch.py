"""One epoch of training and one pass over the test set: the loop's hot path, top to bottom. The losses stay on the
device and are read about once a second (when the progress bar redraws) and at the end of the epoch; a loss that is
not finite stops the run there (``NonFiniteLoss``)."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from model.training import Stepper
from trainer.distributed import Dist


class NonFiniteLoss(Exception):
    """A loss that is NaN or infinite: training cannot go on from there. ``where``: "step 17 of epoch 3"."""

    def __init__(self, where: str, value: float):
        super().__init__(where, value)
        self.where, self.value = where, value


def check_losses(losses: torch.Tensor, epoch: int, dist: Dist | None, final: bool) -> None:
    """NonFiniteLoss naming the first of ``losses`` (each step's, in order) that is not finite, if any. Reads the
    device, so it is called where the loop reads it anyway. Under torchrun only at the end of the epoch (``final``),
    and decided over all ranks at once, so that every rank stops together instead of one waiting for the others."""
    bad = ~torch.isfinite(losses)
    if dist is not None and dist.enabled:
        if not final:
            return
        local = bool(bad.any())
        if dist.sum(float(local))[0] == 0:
            return
        if not local:
            raise NonFiniteLoss(f"epoch {epoch} (on another process)", float("nan"))
    elif not bool(bad.any()):
        return
    step = int(bad.nonzero()[0, 0])
    raise NonFiniteLoss(f"step {step + 1} of epoch {epoch}", float(losses[step]))


def train_one_epoch(step: Stepper, loader, sched, per_batch, epoch, epochs, dist: Dist | None = None,
                    seen: list | None = None, ema=None, net=None):
    """One epoch; returns (loss, accuracy, seconds, images/s), summed over ranks. ``seen`` collects the
    sample indices trained on (the loader then yields them); ``ema`` (with the unwrapped ``net``) is
    updated after every step. NonFiniteLoss at the first step whose loss is NaN or infinite (check_losses, where
    the losses are read: about once a second, and at the end)."""
    from tqdm import tqdm
    step.net.train()
    device = step.device
    losses = torch.zeros(max(len(loader), 1), device=device)    # each step's loss, kept on the device
    sizes = []
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    start = shown = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False, mininterval=1.0,
               dynamic_ncols=True, disable=dist is not None and not dist.main)
    with bar:
        for b, batch in enumerate(bar):
            x, y = batch[0], batch[1]
            if seen is not None:
                seen.extend(batch[2].tolist())
            loss, out = step(x, y)
            if ema is not None:
                ema.update_parameters(net)
            if per_batch:
                sched.step()
            if b == len(losses):        # a loader that yields more batches than its len() said
                losses = torch.cat([losses, torch.zeros_like(losses)])
            losses[b] = loss
            sizes.append(len(y))
            correct += (out.argmax(1) == y).sum()
            n += len(y)
            now = time.perf_counter()
            if now - shown >= 1.0:      # reading the losses waits for the GPU: about once a second, as tqdm redraws
                shown = now
                check_losses(losses[:b + 1], epoch + 1, dist, final=False)
                bar.set_postfix(loss=f"{losses[:b + 1].mean().item():.3f}", img_s=f"{n / (now - start):.0f}")
    if not per_batch:
        sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    check_losses(losses[:len(sizes)], epoch + 1, dist, final=True)
    total_loss = float((losses[:len(sizes)].double() * torch.tensor(sizes, dtype=torch.float64, device=device)).sum())
    total_correct, total_n = correct.item(), n
    if dist is not None:
        total_loss, total_correct, total_n, seconds = dist.sum(total_loss, total_correct, total_n, seconds)
        seconds /= dist.world
    return total_loss / total_n, total_correct / total_n, seconds, total_n / seconds


def evaluate(net, loader, device, amp_dtype, dist: Dist | None = None) -> tuple[float, float]:
    net.eval()
    # summed on the device and read back once: a read per batch would make the host wait for the GPU each time
    loss_t = torch.zeros((), dtype=torch.float64, device=device)
    correct_t = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        for x, y in loader:
            out = net(x).float()
            loss_t += F.cross_entropy(out, y, reduction="sum")
            correct_t += (out.argmax(1) == y).sum()
            n += len(y)
    loss_sum, correct = loss_t.item(), int(correct_t.item())
    if dist is not None:
        loss_sum, correct, n = dist.sum(loss_sum, correct, n)
    return loss_sum / n, correct / n
