"""Memory while preparing and while training from a prepared image folder, at about 60 MB and about 1 GB.

    python benchmarks/bench_prepared_memory.py              # 20,000 images at 32 and at 128 pixels: 58 and 937 MB
    python benchmarks/bench_prepared_memory.py --images 2000 --image_sizes 32,64    # a smoke run

The generated folder of bench_folders.py (`--work`, made if missing) is prepared at each of `--image_sizes`,
which makes `images.npy` N x 3 x S x S bytes: the same files, 16 times the bytes at 128 as at 32. Each step
is its own process and reports the kernel's own counts from /proc/<pid>/status, in MB: VmHWM (peak
resident memory), RssAnon (memory the process owns: heap, torch, batches) and RssFile (pages of mapped
files: torch's shared libraries, and the prepared array's pages, which are the page cache: shared between
processes, clean, and dropped by the kernel when memory is short).

1. preparing into an empty cache: the main process, and the largest of its worker processes' counts
   (sampled every 50 ms while they live);
2. one epoch of training from the prepared set, memory-mapped as the trainer reads it: shuffled batches of
   64 gathered from the mapping, normalised and fed to a small CNN with an SGD step;
3. for contrast, the largest `images.npy` read into memory with `np.load` (no mapping), as a loader that
   holds the dataset would.
The bound docs/performance.md states is the one measured here: RssAnon stays at what torch itself takes plus a few
batches, the same whatever the size of `images.npy`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COUNTS = ("VmHWM", "RssAnon", "RssFile")

STATUS = """
def counts(pid="self"):
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return {key: int(fields[key].split()[0]) // 1024 for key in ("VmHWM", "RssAnon", "RssFile")}  # MB
"""

PREPARE = STATUS + """
import json, multiprocessing, sys, threading, time
from pathlib import Path
from image_classifier.data.data import DataOptions, load_train_test_data

workers, done = {}, threading.Event()

def sample():
    while not done.is_set():
        for child in multiprocessing.active_children():
            try:
                seen = counts(child.pid)
            except (OSError, KeyError, ValueError):
                continue
            before = workers.get(child.pid, {})
            workers[child.pid] = {key: max(value, before.get(key, 0)) for key, value in seen.items()}
        time.sleep(0.05)

threading.Thread(target=sample, daemon=True).start()
options = DataOptions(image_size=int(sys.argv[3]), cache_folder=Path(sys.argv[2]))
data = load_train_test_data(Path(sys.argv[1]), options)
done.set()
largest = {key: max((seen[key] for seen in workers.values()), default=0) for key in ("VmHWM", "RssAnon", "RssFile")}
print(json.dumps({"main": counts(), "workers": largest, "prepared": data.record["prepared"]["folder"]}))
"""

TRAIN = STATUS + """
import json, sys, time
from pathlib import Path
import torch
from torch import nn
from image_classifier.data.batches import iterate_batches
from image_classifier.data.data import DataOptions, load_train_test_data
torch.manual_seed(0)
options = DataOptions(image_size=int(sys.argv[3]), cache_folder=Path(sys.argv[2]))
data = load_train_test_data(Path(sys.argv[1]), options)
model = nn.Sequential(
    nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 10)
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
before = counts()
order = torch.randperm(len(data.train))
started = time.perf_counter()
for images, labels in iterate_batches(data.train, 64, torch.device("cpu"), order):
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
print(json.dumps({"after_loading": before, "after_one_epoch": counts(), "seconds": time.perf_counter() - started}))
"""

IN_MEMORY = STATUS + """
import json, sys
from pathlib import Path
import numpy as np
images = np.load(Path(sys.argv[1]) / "images.npy")
print(json.dumps({"after_np_load": counts(), "array_MB": images.nbytes // 2**20}))
"""


def run(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def shown(values: dict) -> str:
    return ", ".join(f"{key} {values[key]:,}" for key in COUNTS)


def measure(folder: Path, work: Path, image_size: int) -> dict:
    cache = work / f"cache-memory-{image_size}"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    prepared = run(PREPARE, str(folder), str(cache), str(image_size))
    array_mb = (Path(prepared["prepared"]) / "images.npy").stat().st_size // 2**20
    trained = run(TRAIN, str(folder), str(cache), str(image_size))
    print(f"\nimages.npy at {image_size} x {image_size}: {array_mb:,} MB")
    print(f"  1. preparing, main process:   {shown(prepared['main'])}")
    print(f"     preparing, largest worker: {shown(prepared['workers'])}")
    print(f"  2. training, after loading:   {shown(trained['after_loading'])}")
    print(f"     after one epoch ({trained['seconds']:.0f} s):  {shown(trained['after_one_epoch'])}")
    return {"array_MB": array_mb, "prepare": prepared, "train": trained}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="files in the generated folder (default: 20000)")
    parser.add_argument(
        "--image_sizes", default="32,128", help="prepared image sides, comma-separated (default: 32,128)"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_folders"), help="working folder")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    folder = args.work / f"images-{args.images}"
    if not (folder / "train").is_dir():
        test = args.images // 5
        subprocess.run(
            [sys.executable, "-m", "image_classifier.data.synthetic", "--image_folder", "--output", str(folder)]
            + ["--train_size", str(args.images - test), "--test_size", str(test), "--min_side", "24"]
            + ["--max_side", "64"],
            cwd=REPO,
            check=True,
        )
    print("MB per process: VmHWM (peak resident), RssAnon (its own memory), RssFile (mapped files' pages)")
    sizes = [int(size) for size in args.image_sizes.split(",")]
    results = {size: measure(folder, args.work, size) for size in sizes}
    largest = results[max(sizes)]
    loaded = run(IN_MEMORY, largest["prepare"]["prepared"])
    print(f"\n3. np.load of the {largest['array_MB']:,} MB images.npy into memory: {shown(loaded['after_np_load'])}")
    print(json.dumps({"sizes": results, "in_memory": loaded}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
