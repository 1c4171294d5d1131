"""Training and evaluation speed: the package against the notebook's pipeline, on one machine, in one run.

    python benchmarks/bench_training.py                       # full size: 50,000 + 10,000 images (~20 min)
    python benchmarks/bench_training.py --jobs-only           # only start-up and the two whole jobs
    python benchmarks/bench_training.py --quick               # a smoke run in seconds (sizes, not figures)
    python benchmarks/bench_training.py --train-size 10000 --repeats 3 --json bench.json

Datasets in the real CIFAR-10 file format are generated first. Then every measurement runs both sides,
alternating, `--repeats` times, and keeps the best of each (timing noise here is 20-35 %, more on a busy
machine):

- the notebook's pipeline, written here as the PyTorch CIFAR-10 tutorial has it: torchvision `CIFAR10` with
  `ToTensor()` + `Normalize`, `DataLoader(shuffle=True, num_workers=2)`, a plain SGD loop with
  `loss.item()` every step, and its evaluation (batch 4, per-class counts in a Python loop);
- the package: its own data, model, optimiser, `train_one_epoch` and `evaluate`, with the settings the
  trainer picks for that batch size (threads, channels-last, evaluation at `--eval_batch_size` 1000).

It reports:

- start-up: from the start of the process to the end of the first training step, for the trainer
  (`image_classifier_trainer`, through benchmarks/first_step.py) and for the notebook's job;
- two whole jobs as processes, side by side: the trainer with default settings (batch 4, evaluation after
  each epoch, every output written) against the notebook's job (its epochs, its evaluation, the model
  saved), on a short job (`--short-train-size` images, `--short-epochs` epoch) and on the full default
  job (`--train-size` images, `--epochs` epochs), each as a ratio;
- unless `--jobs-only`: training images/s at batch 4, 32, 128 and 512, evaluation images/s, and the
  fraction of this machine's fp32 matmul peak (a 2048 x 2048 `torch.mm`, measured in this run) that
  training reaches.

It prints a table and writes every number to `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
import torchvision
from torch import nn
from torchvision import transforms

from image_classifier.config import TrainConfig
from image_classifier.data.batches import iterate_batches, num_batches, prepare_split
from image_classifier.data.cifar import load_dataset
from image_classifier.data.synthetic import generate_dataset
from image_classifier.model.model import Net
from image_classifier.model.training import EpochProgress, build_optimizer, train_one_epoch
from image_classifier.model.validation import evaluate
from image_classifier.reproducibility import configure_determinism
from image_classifier.training_setup import memory_format, torch_threads_for

TRAIN_BATCH_SIZES = (4, 32, 128, 512)
NOTEBOOK_BATCH_SIZE = 4  # the notebook's, for training and testing
LEARNING_RATE, MOMENTUM = 0.001, 0.9  # the notebook's
# A model's training step costs about 3 forward passes: 0.65 M multiply-adds = 1.3 MFLOP forward per image.
TRAIN_FLOP_PER_IMAGE = 3 * 2 * 651_720
MATMUL_SIZE = 2048
PASSWORD = "benchmark-mock-password"


# --- the notebook's side -------------------------------------------------------------------------------


def notebook_dataset(folder: Path, train: bool) -> torchvision.datasets.CIFAR10:
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    # The generated files are not the official ones, so their md5 sums differ from torchvision's list.
    with mock.patch("torchvision.datasets.cifar.check_integrity", return_value=True):
        return torchvision.datasets.CIFAR10(str(folder), train=train, download=False, transform=transform)


def notebook_loader(folder: Path, train: bool, batch_size: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        notebook_dataset(folder, train), batch_size=batch_size, shuffle=train, num_workers=2
    )


def notebook_train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, log_every: int = 2000) -> None:
    criterion = nn.CrossEntropyLoss()
    running_loss = 0.0
    for i, (inputs, labels) in enumerate(loader):
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        if i % log_every == log_every - 1:
            print(f"[{i + 1:5d}] loss: {running_loss / log_every:.3f}", file=sys.stderr)
            running_loss = 0.0


def notebook_evaluate(model: nn.Module, loader, num_classes: int) -> tuple[list[int], list[int]]:
    """The tutorial's per-class evaluation: per-image Python counting, batch by batch."""
    correct, total = [0] * num_classes, [0] * num_classes
    with torch.no_grad():
        for images, labels in loader:
            _, predictions = torch.max(model(images), 1)
            for label, prediction in zip(labels, predictions):
                total[label] += 1
                correct[label] += int(label == prediction)
    return correct, total


def notebook_job(folder: Path, output: Path, num_epochs: int, first_step_file: Path | None = None) -> None:
    """The notebook's whole job, run as its own process by `time_notebook_job`.

    With `first_step_file`: write the time the first training step ended there and stop (start-up).
    """
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    if first_step_file is not None:

        def stop_after_the_first_step(optimizer, args, kwargs) -> None:
            first_step_file.write_text(json.dumps({"first_step_done": time.time()}), encoding="utf-8")
            os._exit(0)

        optimizer.register_step_post_hook(stop_after_the_first_step)
    train_loader = notebook_loader(folder, True, NOTEBOOK_BATCH_SIZE)
    for _ in range(num_epochs):
        notebook_train_epoch(model, train_loader, optimizer)
    torch.save(model.state_dict(), output / "cifar_net.pth")
    correct, total = notebook_evaluate(model, notebook_loader(folder, False, NOTEBOOK_BATCH_SIZE), 10)
    print(f"Accuracy of the network on the test images: {100 * sum(correct) / sum(total):.1f} %")


# --- the package's side --------------------------------------------------------------------------------


def package_config(batch_size: int) -> TrainConfig:
    return TrainConfig("bench", "bench", Path("."), Path("."), batch_size=batch_size)


def package_train_images_per_second(data, batch_size: int) -> tuple[float, int, nn.Module]:
    config = package_config(batch_size)
    threads = torch_threads_for(config)
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    configure_determinism(config.deterministic, device)  # as the trainer runs (the notebook's side turns it off)
    train = prepare_split(data.train, device, memory_format(config))  # what the trainer does once per run
    torch.manual_seed(0)
    model = Net(len(data.classes)).to(memory_format=memory_format(config))
    optimizer = build_optimizer(model, LEARNING_RATE, MOMENTUM)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    batches = iterate_batches(train, batch_size, device, order)
    train_one_epoch(model, batches, optimizer, EpochProgress(epoch=1), num_batches(len(train), batch_size))
    return len(train) / (time.perf_counter() - started), threads, model


def notebook_train_images_per_second(folder: Path, batch_size: int, default_threads: int) -> float:
    torch.set_num_threads(default_threads)  # the notebook never sets it
    torch.use_deterministic_algorithms(False)
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    loader = notebook_loader(folder, True, batch_size)
    started = time.perf_counter()
    notebook_train_epoch(model, loader, optimizer, log_every=10**9)
    return len(loader.dataset) / (time.perf_counter() - started)


def package_eval_images_per_second(model: nn.Module, data, threads: int) -> tuple[float, dict, dict]:
    """Evaluation as the trainer does it (prepared split, --eval_batch_size), and at the training batch size."""
    config = package_config(NOTEBOOK_BATCH_SIZE)
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    configure_determinism(config.deterministic, device)
    test = prepare_split(data.test, device, memory_format(config))
    started = time.perf_counter()
    metrics = evaluate(model, iterate_batches(test, config.eval_batch_size, device), data.classes)
    seconds = time.perf_counter() - started
    at_training_batch_size = evaluate(model, iterate_batches(test, config.batch_size, device), data.classes)
    return len(test) / seconds, metrics, at_training_batch_size


def notebook_eval_images_per_second(folder: Path, default_threads: int) -> float:
    torch.set_num_threads(default_threads)
    torch.use_deterministic_algorithms(False)
    torch.manual_seed(0)
    model = Net()
    loader = notebook_loader(folder, False, NOTEBOOK_BATCH_SIZE)
    started = time.perf_counter()
    notebook_evaluate(model, loader, 10)
    return len(loader.dataset) / (time.perf_counter() - started)


# --- whole jobs, as processes --------------------------------------------------------------------------


def timed_process(args: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds of the process, and the CPU seconds (user + system) of it and every process it waited for.

    CPU seconds vary less than wall seconds on a machine shared with other work: they leave out the time
    spent waiting for a core (not the slowdown of sharing caches).
    """
    cpu_before = _children_cpu_seconds()
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])}... failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds, _children_cpu_seconds() - cpu_before


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def trainer_arguments(folder: Path, experiments: Path, run_name: str, num_epochs: int) -> list[str]:
    args = ["--experiment_name", "bench", "--run_name", run_name, "--dataset_folder", str(folder)]
    return args + ["--experiments_folder", str(experiments), "--num_epochs", str(num_epochs), "--device", "cpu"]


def time_package_job(folder: Path, experiments: Path, run_name: str, num_epochs: int) -> tuple[float, float]:
    trainer = Path(sys.executable).with_name("image_classifier_trainer")
    args = [str(trainer), *trainer_arguments(folder, experiments, run_name, num_epochs)]
    return timed_process(args, env={**os.environ, "DB_PASSWORD": PASSWORD})


def time_notebook_job(folder: Path, output: Path, num_epochs: int) -> tuple[float, float]:
    output.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, __file__, "--notebook-job", str(folder), str(output), str(num_epochs)]
    return timed_process(args)


def seconds_to_first_step(args: list[str], record: Path, env: dict | None = None) -> float:
    """From just before the process starts to the end of its first training step (as the process saw it)."""
    started = time.time()
    timed_process(args, env)
    return json.loads(record.read_text(encoding="utf-8"))["first_step_done"] - started


def package_startup(folder: Path, work: Path, run_name: str) -> float:
    record = work / f"{run_name}.json"
    probe = Path(__file__).with_name("first_step.py")
    args = [sys.executable, str(probe), str(record), *trainer_arguments(folder, work / "startup", run_name, 1)]
    return seconds_to_first_step(args, record, env={**os.environ, "DB_PASSWORD": PASSWORD})


def notebook_startup(folder: Path, work: Path, run_name: str) -> float:
    record = work / f"{run_name}.json"
    output = work / run_name
    output.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, __file__, "--notebook-job", str(folder), str(output), "1", "--notebook-first-step"]
    return seconds_to_first_step([*args, str(record)], record)


# --- the machine ---------------------------------------------------------------------------------------


def matmul_peak_gflops(threads: int, repeats: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    torch.mm(a, b)  # warm-up: first call allocates and picks kernels
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * MATMUL_SIZE**3 / (time.perf_counter() - started) / 1e9)
    return best


def machine_facts(default_threads: int) -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "torch_default_threads": default_threads,
        "load_average_1min_at_start": os.getloadavg()[0],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "torch": str(torch.__version__),
        "cuda_available": torch.cuda.is_available(),
    }


# --- the run -------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, folders: dict[str, Path], work: Path) -> dict:
    default_threads = torch.get_num_threads()
    results: dict = {"machine": machine_facts(default_threads), "settings": vars(args).copy()}
    results["settings"]["json"] = str(args.json)
    results.update(measure_jobs(args, folders, work))
    if not args.jobs_only:
        results.update(measure_throughput(args, folders["full"], default_threads))
    results["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    return results


def measure_jobs(args: argparse.Namespace, folders: dict[str, Path], work: Path) -> dict:
    """Start-up and the whole jobs, as processes: the two sides alternate, in turn first, best of the repeats."""
    startup: dict[str, list[float]] = {"notebook": [], "package": []}
    jobs = {"short": (folders["short"], args.short_epochs), "full": (folders["full"], args.epochs)}
    seconds: dict = {job: {"notebook": [], "package": []} for job in jobs}
    cpu_seconds: dict = {job: {"notebook": [], "package": []} for job in jobs}
    for repeat in range(args.repeats):
        sides = ["notebook", "package"] if repeat % 2 == 0 else ["package", "notebook"]
        for side in sides:
            time_startup = notebook_startup if side == "notebook" else package_startup
            startup[side].append(time_startup(folders["short"], work, f"startup-{side}-{repeat}"))
        print(
            f"start-up: notebook {startup['notebook'][-1]:.1f} s, package {startup['package'][-1]:.1f} s",
            file=sys.stderr,
        )
        for job, (folder, epochs) in jobs.items():
            for side in sides:
                if side == "notebook":
                    taken, cpu = time_notebook_job(folder, work / f"notebook-{job}-{repeat}", epochs)
                else:
                    taken, cpu = time_package_job(folder, work / "experiments", f"{job}-{repeat}", epochs)
                seconds[job][side].append(taken)
                cpu_seconds[job][side].append(cpu)
            notebook, package = seconds[job]["notebook"][-1], seconds[job]["package"][-1]
            print(f"{job} job: notebook {notebook:.1f} s, package {package:.1f} s", file=sys.stderr)
    results: dict = {
        "startup": {
            "notebook_seconds": min(startup["notebook"]),
            "package_seconds": min(startup["package"]),
            "all_notebook_seconds": startup["notebook"],
            "all_package_seconds": startup["package"],
        },
        "jobs": {},
    }
    for job, (folder, epochs) in jobs.items():
        notebook, package = seconds[job]["notebook"], seconds[job]["package"]
        results["jobs"][job] = {
            "epochs": epochs,
            "train_images": args.short_train_size if job == "short" else args.train_size,
            "notebook_seconds": min(notebook),
            "package_seconds": min(package),
            "ratio": min(notebook) / min(package),
            "all_notebook_seconds": notebook,
            "all_package_seconds": package,
            "notebook_cpu_seconds": min(cpu_seconds[job]["notebook"]),
            "package_cpu_seconds": min(cpu_seconds[job]["package"]),
        }
    return results


def measure_throughput(args: argparse.Namespace, folder: Path, default_threads: int) -> dict:
    """Training images/s per batch size, evaluation images/s, in this process; the matmul peak."""
    results: dict = {"train": {}}
    peaks = [matmul_peak_gflops(default_threads)]
    data = load_dataset(folder)
    batch_4_model, batch_4_threads = None, 1
    for batch_size in args.batch_sizes:
        notebook, package = [], []
        threads = 1
        for _ in range(args.repeats):
            notebook.append(notebook_train_images_per_second(folder, batch_size, default_threads))
            speed, threads, model = package_train_images_per_second(data, batch_size)
            package.append(speed)
            if batch_size == NOTEBOOK_BATCH_SIZE:
                batch_4_model, batch_4_threads = model, threads
        best = max(package)
        results["train"][str(batch_size)] = {
            "notebook_images_per_second": max(notebook),
            "package_images_per_second": best,
            "ratio": best / max(notebook),
            "package_threads": threads,
            "package_gflops": best * TRAIN_FLOP_PER_IMAGE / 1e9,
        }
        print(f"train batch {batch_size}: notebook {max(notebook):.0f}, package {best:.0f} images/s", file=sys.stderr)
    peaks.append(matmul_peak_gflops(default_threads))

    if batch_4_model is None:  # batch 4 not measured: evaluate a model as trained at the first batch size
        _, batch_4_threads, batch_4_model = package_train_images_per_second(data, NOTEBOOK_BATCH_SIZE)
    notebook_eval, package_eval = [], []
    for _ in range(args.repeats):
        notebook_eval.append(notebook_eval_images_per_second(folder, default_threads))
        speed, metrics, at_training_batch_size = package_eval_images_per_second(batch_4_model, data, batch_4_threads)
        package_eval.append(speed)
    results["eval"] = {
        "notebook_images_per_second": max(notebook_eval),
        "package_images_per_second": max(package_eval),
        "ratio": max(package_eval) / max(notebook_eval),
        "package_eval_batch_size": package_config(NOTEBOOK_BATCH_SIZE).eval_batch_size,
        # Counts, not the mean loss (a float sum that the batch size reorders).
        "same_counts_as_at_training_batch_size": metrics["confusion_matrix"]
        == at_training_batch_size["confusion_matrix"],
    }
    print(f"eval: notebook {max(notebook_eval):.0f}, package {max(package_eval):.0f} images/s", file=sys.stderr)

    peak = max(peaks)
    results["matmul_peak_gflops"] = peak
    for row in results["train"].values():
        row["fraction_of_matmul_peak"] = row["package_gflops"] / peak
    return results


def table(results: dict) -> str:
    lines = [
        "| measurement | notebook | package | ratio | package threads | fraction of matmul peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    start = results["startup"]
    lines.append(
        f"| start-up: process start to the end of the first training step, s | {start['notebook_seconds']:.2f} | "
        f"{start['package_seconds']:.2f} | {start['notebook_seconds'] / start['package_seconds']:.2f}x | | |"
    )
    for name, job in results["jobs"].items():
        label = "short job" if name == "short" else "default job"
        lines.append(
            f"| {label}, {job['epochs']} epoch(s) of {job['train_images']:,} images at batch 4, wall s | "
            f"{job['notebook_seconds']:.1f} | {job['package_seconds']:.1f} | {job['ratio']:.2f}x | | |"
        )
        lines.append(
            f"| {label}, CPU s (user + system, every process) | {job['notebook_cpu_seconds']:.1f} | "
            f"{job['package_cpu_seconds']:.1f} | {job['notebook_cpu_seconds'] / job['package_cpu_seconds']:.2f}x | | |"
        )
    machine = results["machine"]
    if "train" not in results:
        lines.append("")
        lines.append(
            f"{machine['cpu_count']} CPUs, {machine['cpu_capability']}; load average "
            f"{machine['load_average_1min_at_start']:.1f} at the start, {machine['load_average_1min_at_end']:.1f} "
            "at the end"
        )
        return "\n".join(lines)
    for batch_size, row in results["train"].items():
        lines.append(
            f"| train images/s, batch {batch_size} | {row['notebook_images_per_second']:,.0f} | "
            f"{row['package_images_per_second']:,.0f} | {row['ratio']:.2f}x | {row['package_threads']} | "
            f"{100 * row['fraction_of_matmul_peak']:.0f} % |"
        )
    ev = results["eval"]
    lines.append(
        f"| eval images/s (notebook batch 4, package batch {ev['package_eval_batch_size']}) | "
        f"{ev['notebook_images_per_second']:,.0f} | {ev['package_images_per_second']:,.0f} | {ev['ratio']:.2f}x | | |"
    )
    lines.append("")
    lines.append(
        f"fp32 matmul peak {results['matmul_peak_gflops']:.0f} GFLOP/s ({MATMUL_SIZE}x{MATMUL_SIZE} torch.mm, "
        f"{machine['torch_default_threads']} threads); {machine['cpu_count']} CPUs, {machine['cpu_capability']}; "
        f"load average {machine['load_average_1min_at_start']:.1f} at the start, "
        f"{machine['load_average_1min_at_end']:.1f} at the end; eval counts identical at batch 4 and "
        f"{ev['package_eval_batch_size']}: {ev['same_counts_as_at_training_batch_size']}"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=50_000, help="training images generated (default 50000)")
    parser.add_argument("--test-size", type=int, default=10_000, help="test images generated (default 10000)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side, best kept (default 2)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the full job (default 2, the default job)")
    parser.add_argument(
        "--short-train-size", type=int, default=20_000, help="training images of the short job (default 20000)"
    )
    parser.add_argument("--short-epochs", type=int, default=1, help="epochs of the short job (default 1)")
    parser.add_argument(
        "--jobs-only",
        action="store_true",
        help="measure only start-up and the two whole jobs, not the throughput per batch size",
    )
    parser.add_argument(
        "--batch-sizes",
        type=lambda text: tuple(int(part) for part in text.split(",")),
        default=TRAIN_BATCH_SIZES,
        help="training batch sizes to measure (default 4,32,128,512)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 2,000 (short job 1,000) + 500 images, 1 repeat, 1 epoch (checks the script, not the speed)",
    )
    parser.add_argument("--json", type=Path, default=Path("bench_training.json"), help="where to write the results")
    parser.add_argument("--notebook-job", nargs=3, metavar=("FOLDER", "OUTPUT", "EPOCHS"), help=argparse.SUPPRESS)
    parser.add_argument("--notebook-first-step", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.notebook_job:
        folder, output, epochs = args.notebook_job
        notebook_job(Path(folder), Path(output), int(epochs), args.notebook_first_step)
        return 0
    if args.quick:
        args.train_size, args.test_size, args.repeats, args.epochs = 2000, 500, 1, 1
        args.short_train_size = 1000
    with tempfile.TemporaryDirectory(prefix="bench_training-") as tmp:
        folders = {"full": Path(tmp) / "dataset", "short": Path(tmp) / "short_dataset"}
        # torchvision's CIFAR10 wants the five files data_batch_1..5, as the real dataset has them.
        generate_dataset(folders["full"], args.train_size, args.test_size, seed=0, train_batches=5)
        generate_dataset(folders["short"], args.short_train_size, args.test_size, seed=1, train_batches=5)
        results = measure(args, folders, Path(tmp))
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
