"""Run the trainer up to the end of its first training step, then report when that was and what was imported.

    python benchmarks/first_step.py OUTPUT.json <image_classifier_trainer arguments...>

writes {"first_step_started": t, "first_step_done": t, "modules": [...]} (t: `time.time()`, for the caller
to subtract the moment it started this process) and ends the process at once, leaving the run
unfinished. `bench_training.py` times the trainer's start-up with it; tests/test_startup.py checks that
nothing the first step does not need (torchvision, torch._dynamo, matplotlib...) was imported by then.
Only this probe patches the trainer: the package has no test hooks.
"""

import json
import os
import sys
import time

from image_classifier import trainer
from image_classifier.main import main


def probe(output: str) -> None:
    train_one_epoch = trainer.train_one_epoch

    def patched_train(model, batches, optimizer, progress, total_steps, after_step=None, **options):
        started = time.time()

        def first_step_done(progress) -> None:
            record = {"first_step_started": started, "first_step_done": time.time(), "modules": sorted(sys.modules)}
            with open(output, "w", encoding="utf-8") as file:
                json.dump(record, file)
            os._exit(0)  # the run stays unfinished: the caller throws its folder away

        return train_one_epoch(model, batches, optimizer, progress, total_steps, first_step_done, **options)

    trainer.train_one_epoch = patched_train


if __name__ == "__main__":
    probe(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
