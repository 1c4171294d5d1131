"""Where a training step's time goes: torch.profiler's table of the trainer's step, as the trainer runs it.

    python benchmarks/profile_step.py                    # batch 4, the default job's step
    python benchmarks/profile_step.py --batch-size 512 --steps 40

The package's own `prepare_split`, `Net`, optimiser and `train_one_epoch`, with the trainer's settings for
that batch size (threads, channels-last, deterministic algorithms), on random images. It prints the time
per step (best of `--repeats` chunks, wall clock and this thread's CPU time: CPU time is the steadier of
the two on a machine shared with other work) and the profiler's table of `--steps` steps, heaviest
operators first (self CPU time).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from image_classifier.config import TrainConfig
from image_classifier.data.batches import ImageSplit, iterate_batches, prepare_split
from image_classifier.model.model import Net
from image_classifier.model.training import EpochProgress, build_optimizer, train_one_epoch
from image_classifier.reproducibility import configure_determinism
from image_classifier.training_setup import memory_format, torch_threads_for


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4, help="training batch size (default 4)")
    parser.add_argument("--steps", type=int, default=500, help="steps per timed chunk and profiled (default 500)")
    parser.add_argument("--repeats", type=int, default=5, help="timed chunks, best kept (default 5)")
    parser.add_argument("--rows", type=int, default=25, help="rows of the profiler's table (default 25)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = TrainConfig("profile", "profile", Path("."), Path("."), batch_size=args.batch_size)
    threads = torch_threads_for(config)
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    configure_determinism(config.deterministic, device)
    size = args.steps * args.batch_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (size,), generator=generator)
    split = prepare_split(ImageSplit(images, labels), device, memory_format(config))
    torch.manual_seed(0)
    model = Net().to(memory_format=memory_format(config))
    optimizer = build_optimizer(model, config.learning_rate, config.momentum)

    def chunk() -> None:
        batches = iterate_batches(split, args.batch_size, device, torch.randperm(size, generator=generator))
        train_one_epoch(model, batches, optimizer, EpochProgress(epoch=1), args.steps, progress_bar=False)

    chunk()  # warm-up: first calls allocate and pick kernels
    wall, cpu = [], []
    for _ in range(args.repeats):
        started, cpu_started = time.perf_counter(), time.thread_time()
        chunk()
        wall.append((time.perf_counter() - started) / args.steps)
        cpu.append((time.thread_time() - cpu_started) / args.steps)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        chunk()
    print(
        f"batch {args.batch_size}, {threads} thread(s), channels-last {config.channels_last}: "
        f"{1e3 * min(wall):.3f} ms per step wall, {1e3 * min(cpu):.3f} ms CPU (best of {args.repeats} x "
        f"{args.steps} steps); load average {os.getloadavg()[0]:.1f}"
    )
    print(f"torch.profiler, {args.steps} steps (the profiler itself adds time per operator):")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
