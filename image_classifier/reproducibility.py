"""Seeding, deterministic kernels, RNG snapshots and the facts about the environment a run records."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import image_classifier

# Written by requirements/requirements-*.sh next to the environment it installed into: which lock file
# the environment came from, so that run.json can name it.
LOCK_RECORD_FILE = "image-classifier-lock.sha256"

# The NVIDIA kernel module's own report ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  ..."),
# the driver version nvidia-smi shows; PyTorch has no call for it.
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")
_DRIVER_VERSION = re.compile(r"Kernel Module\b[^\n]*?\s(\d+(?:\.\d+)+)\s")


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (torch's covers every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic_algorithms(mode: bool) -> None:
    """`torch.use_deterministic_algorithms(mode)`, without importing torch._inductor when nothing compiles.

    torch's function imports torch._inductor.config (and torch._dynamo with it: seconds before the first
    step) only to set inductor's own flag. The eager kernels read the flag that `_C._set_deterministic_algorithms`
    sets; once inductor is loaded (a compiled step), the public function sets both.
    """
    if "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=False)


def configure_determinism(deterministic: bool, device: torch.device) -> dict:
    """Ask PyTorch for deterministic kernels and return the settings, for run.json."""
    if deterministic and device.type == "cuda":
        # cuBLAS is only deterministic with a fixed workspace; it must be set before cuBLAS starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    return {
        "use_deterministic_algorithms": deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "torch_num_threads": torch.get_num_threads(),
    }


def capture_rng_state() -> dict:
    """Every global RNG state, in types that `torch.load(weights_only=True)` accepts."""
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _git_state() -> dict | None:
    """The commit of the checkout the package runs from (editable installs), or None for a wheel."""
    source_dir = Path(image_classifier.__file__).resolve().parent
    try:
        # A wheel installed into a venv that happens to sit inside some checkout is not that checkout's code.
        subprocess.run(
            ["git", "-C", str(source_dir), "ls-files", "--error-unmatch", "__init__.py"],
            capture_output=True,
            check=True,
        )
        commit = subprocess.run(
            ["git", "-C", str(source_dir), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        # Runs and datasets are recorded by their own hashes; "dirty" means changed code or configuration.
        status = subprocess.run(
            ["git", "-C", str(source_dir), "status", "--porcelain", "--untracked-files=no", "--", ":/"]
            + [f":(top,exclude){folder}" for folder in ("experiments", "data")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def _build_commit() -> str | None:
    """The commit setuptools-scm saw when this copy of the package was built (a wheel, an image)."""
    try:
        from image_classifier._version import commit_id
    except ImportError:  # a source tree that was never built or installed
        return None
    return commit_id.removeprefix("g") if commit_id else None


def code_sha256() -> str:
    """One hash over the package's source files: the code that ran, however it was installed."""
    package_dir = Path(image_classifier.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*")):
        # The version file differs between builds of the same code; bytecode follows the sources.
        if path.suffix in (".py", ".yaml") and path.name != "_version.py":
            digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def nvidia_driver_version(report: Path = NVIDIA_DRIVER_FILE) -> str | None:
    """The NVIDIA driver's version (e.g. "550.54.15"), or None where the kernel module does not say."""
    try:
        match = _DRIVER_VERSION.search(report.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return match[1] if match else None


def gpu_facts(device: torch.device) -> dict | None:
    """The GPU a process computes on: its model, which changes a run's bytes, and the driver; None on CPU."""
    if device.type != "cuda":
        return None
    return {"name": torch.cuda.get_device_name(device), "driver": nvidia_driver_version()}


def _lock_file_record() -> dict | None:
    record = Path(sys.prefix) / LOCK_RECORD_FILE
    if not record.is_file():
        return None
    lines = record.read_text(encoding="utf-8").split()
    return dict(zip(lines[1::2], lines[0::2])) or None  # "sha256  name" lines -> {name: sha256}


def torchvision_version() -> str | None:
    """`torchvision.__version__`, read without importing torchvision (None when it is not installed).

    Importing it costs seconds before the first training step (torchvision.models pulls in torch._dynamo).
    The installed metadata's version lacks the build's local label (0.29.1 where torchvision says
    0.29.1+cu130), so the literal in torchvision/version.py is read instead, as run.json always recorded it.
    """
    try:
        spec = importlib.util.find_spec("torchvision")  # finds the package without running its __init__
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    for folder in spec.submodule_search_locations or ():
        try:
            tree = ast.parse((Path(folder) / "version.py").read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(target, ast.Name) and target.id == "__version__" for target in node.targets)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                return node.value.value
    try:
        return importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_facts() -> dict:
    """What besides data and arguments can change a run's bytes: code, versions, platform, lock files."""
    git = _git_state()
    return {
        "code": {
            "commit": git["commit"] if git else _build_commit(),
            "sha256": code_sha256(),
        },
        "versions": {
            "image_classifier": image_classifier.__version__,
            "python": platform.python_version(),
            "torch": str(torch.__version__),  # a TorchVersion, which weights_only loading refuses
            "torchvision": torchvision_version(),
            "numpy": np.__version__,
        },
        "platform": {
            "system": platform.platform(),
            "machine": platform.machine(),
            "cuda": torch.version.cuda,
            # The widest vector instructions PyTorch's CPU kernels use here (AVX2, AVX512...): they change sums.
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "git": git,
        "lock_files": _lock_file_record(),
    }


def run_environment(device: torch.device) -> dict:
    """Where the run's bytes come from besides data and arguments: device, GPU, code, versions, platform."""
    return {"device": str(device), "gpu": gpu_facts(device), **environment_facts()}
