"""Memory while preparing and while training from a prepared image folder of about 1 GB.

    python benchmarks/bench_prepared_memory.py                        # 20,000 images at 128 x 128: 983 MB
    python benchmarks/bench_prepared_memory.py --images 2000 --image_size 64    # a smoke run

The generated folder of bench_folders.py (`--work`, made if missing) is prepared at `--image_size`, which makes
`images.npy` N x 3 x S x S bytes. Each step is its own process, and reports the kernel's own counts from
/proc/self/status: VmHWM (peak resident memory), RssAnon (memory the process owns: heap, torch, batches) and
RssFile (pages of mapped files: the page cache, shared, clean and dropped by the kernel when memory is short).

1. preparing into an empty cache: the main process and its worker processes (peak of the largest child);
2. one epoch of training from the prepared set, memory-mapped as the trainer reads it: shuffled batches of
   64 gathered from the mapping, normalised and fed to a small CNN with an SGD step;
3. for contrast, the same images read into memory with `np.load` (no mapping), as a loader that holds the
   dataset would.
The bound the README states is the one measured here: RssAnon stays at what torch itself takes plus a few
batches, whatever the size of `images.npy`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

STATUS = """
def memory():
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) // 1024  # MB
    return fields
"""

PREPARE = STATUS + """
import json, resource, sys
from pathlib import Path
from image_classifier.data.data import DataOptions, load_train_test_data
data = load_train_test_data(Path(sys.argv[1]), DataOptions(image_size=int(sys.argv[3]), cache_folder=Path(sys.argv[2])))
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
print(json.dumps({"main": memory(), "largest_worker_peak_MB": children, "prepared": data.record["prepared"]["folder"]}))
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
before = memory()
order = torch.randperm(len(data.train))
started = time.perf_counter()
for images, labels in iterate_batches(data.train, 64, torch.device("cpu"), order):
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
print(json.dumps({"after_loading": before, "after_one_epoch": memory(), "seconds": time.perf_counter() - started}))
"""

IN_MEMORY = STATUS + """
import json, sys
from pathlib import Path
import numpy as np
images = np.load(Path(sys.argv[1]) / "images.npy")
print(json.dumps({"after_np_load": memory(), "array_MB": images.nbytes // 2**20}))
"""


def run(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="files in the generated folder (default: 20000)")
    parser.add_argument("--image_size", type=int, default=128, help="prepared image side (default: 128)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_folders"), help="working folder")
    args = parser.parse_args()
    folder = args.work / f"images-{args.images}"
    if not (folder / "train").is_dir():
        test = args.images // 5
        subprocess.run(
            [sys.executable, "-m", "image_classifier.data.synthetic", "--image-folder", "--output", str(folder)]
            + ["--train-size", str(args.images - test), "--test-size", str(test), "--min-side", "24"]
            + ["--max-side", "64"],
            cwd=REPO,
            check=True,
        )
    cache = args.work / f"cache-memory-{args.image_size}"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    size = str(args.image_size)

    prepared = run(PREPARE, str(folder), str(cache), size)
    array_mb = (Path(prepared["prepared"]) / "images.npy").stat().st_size // 2**20
    print(f"prepared images.npy: {array_mb} MB ({args.images} images at {size} x {size})")
    print(
        f"1. preparing: main process {prepared['main']} MB; largest worker peak {prepared['largest_worker_peak_MB']} MB"
    )
    trained = run(TRAIN, str(folder), str(cache), size)
    print(
        f"2. one epoch from the mapping ({trained['seconds']:.1f} s): after loading {trained['after_loading']} MB; "
        f"after the epoch {trained['after_one_epoch']} MB"
    )
    loaded = run(IN_MEMORY, prepared["prepared"])
    print(f"3. np.load into memory: {loaded['after_np_load']} MB")
    print(json.dumps({"array_MB": array_mb, "prepare": prepared, "train": trained, "in_memory": loaded}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
