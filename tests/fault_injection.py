"""Run the trainer and signal its own process at an exact point, so recovery tests are deterministic.

    python tests/fault_injection.py KILL train:<epoch>:<step> <trainer arguments...>
    python tests/fault_injection.py TERM evaluate:<n> ...      (on the first batch of the n-th evaluation)
    python tests/fault_injection.py INT saved:<epoch>:<step> ...  (just after that checkpoint is written)
    python tests/fault_injection.py KILL written:<file>:<n> ...    (just after the n-th write of that run file)
    python tests/fault_injection.py KILL published ...             (just after the run got its final name)
    python tests/fault_injection.py KILL torn:<file>:<n>:<bytes> ...  (inside the n-th write of that file)
    python tests/fault_injection.py KILL torn:registry.json:1:100 runs register ...  (the runs command)

The signal is real (os.kill on itself): SIGKILL ends the process on the spot, SIGTERM and SIGINT go
through the trainer's handlers. Only this test helper patches the trainer; the package has no test hooks.
Under torchrun (`python -m torch.distributed.run ... tests/fault_injection.py ...`), FAULT_RANK=<r> in the
environment limits the fault to that rank.

`torn` cuts a file off inside its write: the writer writes the whole file as usual, which is then cut to
its first <bytes> bytes (what the disk holds when a process dies that far into the write) and the process
is killed on the spot, before it can rename, fsync or clean up anything. A file the package writes
atomically (checkpoint.pt, run.json, figures, registry.json) is cut in its temporary sibling just before
its rename over the real name; model.pth, written under its own name, is cut there.
"""

import os
import signal
import sys
from pathlib import Path

import torch

from image_classifier import run_dir, trainer
from image_classifier.main import main


def inject(signal_name: str, point: str) -> None:
    if os.environ.get("FAULT_RANK", os.environ.get("RANK")) != os.environ.get("RANK"):
        return  # another rank of the torchrun job is the one to fail
    sig = getattr(signal, f"SIG{signal_name}")
    kind, *numbers = point.split(":")
    where = tuple(int(n) for n in numbers) if kind not in ("written", "torn") else ()

    if kind == "train":
        train_one_epoch = trainer.train_one_epoch

        def patched_train(model, batches, optimizer, progress, total_steps, after_step=None, **options):
            def hooked(progress):
                if (progress.epoch, progress.step) == where:
                    os.kill(os.getpid(), sig)
                after_step(progress)

            return train_one_epoch(model, batches, optimizer, progress, total_steps, hooked, **options)

        trainer.train_one_epoch = patched_train
    elif kind == "evaluate":
        evaluate, calls = trainer.evaluate, []

        def patched_evaluate(model, batches, classes, total_steps=None, after_step=None, **options):
            calls.append(1)
            fired = []

            def hooked():
                if len(calls) == where[0] and not fired:
                    fired.append(1)
                    os.kill(os.getpid(), sig)
                after_step()

            return evaluate(model, batches, classes, total_steps, hooked, **options)

        trainer.evaluate = patched_evaluate
    elif kind == "saved":
        save_checkpoint = trainer.TrainingSession.save_checkpoint

        def patched_save(self, state):
            save_checkpoint(self, state)
            if (state.progress.epoch, state.progress.step) == where:
                os.kill(os.getpid(), sig)

        trainer.TrainingSession.save_checkpoint = patched_save
    elif kind == "written":
        name, count = numbers[0], int(numbers[1])
        replace_atomically, writes = run_dir.RunDirectory._replace_atomically, []

        def patched_replace(directory, file_name, write):
            replace_atomically(directory, file_name, write)
            writes.append(file_name)
            if writes.count(name) == count and file_name == name:
                os.kill(os.getpid(), sig)

        save_model = run_dir.RunDirectory.save_model

        def patched_save_model(self, state_dict):
            digest = save_model(self, state_dict)
            if name == run_dir.MODEL_FILE:
                os.kill(os.getpid(), sig)
            return digest

        run_dir.RunDirectory._replace_atomically = staticmethod(patched_replace)
        run_dir.RunDirectory.save_model = patched_save_model
    elif kind == "published":
        replace = run_dir.os.replace

        def patched_os_replace(source, target):
            replace(source, target)
            if str(source).endswith(run_dir.INCOMPLETE_SUFFIX):
                os.kill(os.getpid(), sig)

        run_dir.os.replace = patched_os_replace
    elif kind == "torn":
        name, count, size = numbers[0], int(numbers[1]), int(numbers[2])
        writes = []

        def cut_and_die(path) -> None:
            full = Path(path).stat().st_size
            if size >= full:
                raise SystemExit(f"{path} has {full} bytes: cutting it at {size} would not tear it")
            os.truncate(path, size)
            os.kill(os.getpid(), sig)

        replace = os.replace

        def patched_os_replace(source, target):
            if Path(target).name == name:
                writes.append(1)
                if len(writes) == count:
                    cut_and_die(source)
            replace(source, target)

        save = torch.save

        def patched_torch_save(obj, f, *args, **kwargs):
            save(obj, f, *args, **kwargs)
            if isinstance(f, (str, os.PathLike)) and Path(f).name == name:
                writes.append(1)
                if len(writes) == count:
                    cut_and_die(f)

        os.replace = patched_os_replace
        torch.save = patched_torch_save
    else:
        raise SystemExit(f"unknown point {point!r}")


if __name__ == "__main__":
    inject(sys.argv[1], sys.argv[2])
    if sys.argv[3:4] == ["runs"]:
        from image_classifier.tracking.runs import main as runs_main

        sys.exit(runs_main(sys.argv[4:]))
    sys.exit(main(sys.argv[3:]))
