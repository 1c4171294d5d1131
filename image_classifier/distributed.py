"""Where this process stands in a `torchrun` job: its rank, the job's size, its device, the collectives, the
checks that every rank read the same data and ended with the same weights, and the error for a lost peer.

`torchrun --nproc_per_node=N -m image_classifier.main ...` starts N processes with WORLD_SIZE, RANK and
LOCAL_RANK in their environment; a plain run has none and is a job of one. Every rank trains the same model
with DistributedDataParallel (gloo on CPU, nccl on GPU) on its shard of the data; rank 0 alone writes the
run directory, logs and shows progress bars.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from image_classifier.errors import DistributedRunError, UserError

logger = logging.getLogger(__name__)

# How long a rank waits for the others in a collective before it gives up. torchrun's agent tears the job
# down as soon as one rank exits with an error; this bounds the wait when a rank hangs instead.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for, but PyTorch sees no CUDA device here")
    if device.type == "cuda" and world_size > 1:
        if device.index is not None:
            raise UserError(f"--device {name} under torchrun: use cuda or auto, each process takes its local GPU")
        device = torch.device("cuda", local_rank)
    return device


@dataclass(frozen=True)
class Runtime:
    """The facts of this process that are not arguments: device, rank, job size."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def is_main_process(self) -> bool:
        return self.rank == 0

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of one permutation shared by every rank (DistributedSampler's semantics).

        The permutation is padded with its own first items to a multiple of the job size, so every rank
        takes as many steps as the others; rank r takes items r, r + N, r + 2N... With one process it is
        the whole permutation, and with N processes at batch size B the N batches of step k together
        hold items N*B*k to N*B*(k+1) - 1: the batch of size N*B a single process would take.
        """
        if not self.distributed:
            return order
        padding = (-len(order)) % self.world_size
        padded = torch.cat([order, order[:padding]]) if padding else order
        return padded[self.rank :: self.world_size]

    def test_shard(self, size: int) -> torch.Tensor | None:
        """The test images this rank evaluates: every N-th, none twice (counts are summed over ranks)."""
        return None if not self.distributed else torch.arange(self.rank, size, self.world_size)

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over every rank (a collective), on the tensor's own device."""
        if not self.distributed:
            return tensor
        on_device = tensor.to(self.device)  # nccl reduces GPU tensors only; gloo CPU ones
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
        return on_device.to(tensor.device)

    def gather(self, value: object) -> list:
        """Every rank's `value`, in rank order (a collective: every rank must call it at the same point)."""
        if not self.distributed:
            return [value]
        values: list = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def share_main_buffers(self, model: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (batch norm's running statistics), in place.

        DDP does this at the start of every forward pass; each rank's own batches then update its copy. After
        the last step of an epoch they differ, so evaluation and the saved model take rank 0's, as DDP would.
        """
        if not self.distributed:
            return
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)

    def broadcast_from_main(self, value: object) -> object:
        """Rank 0's `value` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def runtime_for(device_name: str) -> Iterator[Runtime]:
    """The process's Runtime; under torchrun, joined to the job's process group until the block ends."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield Runtime(resolve_device(device_name))
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank, world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield Runtime(device, rank, world_size)
    finally:
        dist.destroy_process_group()


def check_same_data(runtime: Runtime, fingerprint: object) -> None:
    """Under torchrun: every rank must have read the same dataset (a file changed between them otherwise)."""
    if not runtime.distributed:
        return
    fingerprints = runtime.gather(fingerprint)
    if any(other != fingerprints[0] for other in fingerprints):
        raise DistributedRunError("the processes read different datasets: a file changed while the job started")


def check_same_weights(runtime: Runtime, model: torch.nn.Module) -> None:
    """Under torchrun: every rank must end with bit-identical weights (DDP keeps them so; this proves it)."""
    if not runtime.distributed:
        return
    digests = runtime.gather(weights_digest(model))
    if len(set(digests)) != 1:
        raise DistributedRunError(f"the processes ended with different weights (sha256 by rank: {digests})")
    # Not model.pth's sha256: that hashes the file (a zip archive), this the tensors' bytes.
    logger.info(
        "weights identical on all %d processes (sha256 of the weight tensors %s; model.pth's sha256, of the "
        "file, is in run.json)",
        len(digests),
        digests[0],
    )


def lost_a_peer(exc: RuntimeError) -> bool:
    """Whether `exc` says that another process of the job died (torchrun names which one)."""
    # A collective whose partner died raises DistError, or, from DDP's backward hooks, a plain RuntimeError
    # carrying the transport's message ("[.../gloo/transport/tcp/pair.cc:545] Read error ... Connection reset
    # by peer", or NCCL's).
    return isinstance(exc, torch.distributed.DistError) or any(word in str(exc) for word in ("gloo", "NCCL"))


def peer_failure(exc: RuntimeError, work_dir: Path) -> DistributedRunError:
    """The one-line error for a job that lost a process: what happened and how to go on."""
    first_line = str(exc).strip().splitlines()[0]
    return DistributedRunError(
        f"another process of this torchrun job failed ({first_line}); torchrun names it. The run stays "
        f"unfinished in {work_dir}: run the same torchrun command with --resume"
    )
