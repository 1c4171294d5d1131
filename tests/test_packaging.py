"""The built wheel: declared dependencies, package data, and the command from a fresh environment."""

import base64
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO_ROOT, RUN_FILES, run_command

pytestmark = pytest.mark.slow

PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"


def requirement_names(lines) -> set[str]:
    names = set()
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~;\[ ]", line)[0].lower().replace("_", "-"))
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO_ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("image_classifier-*.whl")
    return wheel


def test_pyproject_dependencies_agree_with_requirements_prod_in():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    prod_in = (REPO_ROOT / "requirements" / "requirements-prod.in").read_text().splitlines()
    # The MLflow client is an extra of the package, yet locked in prod so that the Docker image has it.
    declared = [*project["dependencies"], *project["optional-dependencies"]["mlflow"]]
    assert requirement_names(declared) == requirement_names(prod_in)


def test_wheel_declares_dependencies_and_ships_package_data(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "image_classifier/data/db_connect.yaml" in names
    assert not any(name.startswith(("tests/", "experiments/", "data/")) for name in names)
    requires = [line.split(":", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    prod_in = (REPO_ROOT / "requirements" / "requirements-prod.in").read_text().splitlines()
    assert requirement_names(requires) == requirement_names(prod_in)
    assert "Requires-Python: >=3.10" in metadata
    assert "image_classifier_trainer = image_classifier.main:main" in entry_points
    assert "image_classifier_reproduce = image_classifier.reproduce:main" in entry_points


def _is_needed(requirement: Requirement, extras) -> bool:
    """Whether `requirement` applies on this interpreter when its dependent was asked for with `extras`."""
    return requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in (*extras, ""))


def installed_closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The distributions of this environment that `requirements` need, theirs included, by canonical name
    (a missing one raises PackageNotFoundError: the wheel would not install without it)."""
    found: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, frozenset]] = set()
    pending = [requirement for requirement in map(Requirement, requirements) if _is_needed(requirement, ())]
    while pending:
        requirement = pending.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        distribution = metadata.distribution(requirement.name)
        found[key[0]] = distribution
        needs = map(Requirement, distribution.requires or [])
        pending.extend(need for need in needs if _is_needed(need, requirement.extras))
    return found


def link_into(site_packages: Path, distributions) -> int:
    """Link every installed file of `distributions` (their RECORD) into `site_packages`; the count."""
    count = 0
    for distribution in distributions:
        for file in distribution.files or []:
            if file.parts[0] == ".." or file.suffix == ".pyc":  # console scripts, caches
                continue
            target = site_packages / file
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(Path(distribution.locate_file(file)).resolve())
                count += 1
    return count


def test_wheel_in_a_venv_with_only_its_declared_dependencies_works_from_any_directory(wheel, dataset, tmp_path):
    with zipfile.ZipFile(wheel) as archive:
        metadata_text = archive.read(next(n for n in archive.namelist() if n.endswith("METADATA"))).decode()
    requires = [
        line.split(":", 1)[1].strip() for line in metadata_text.splitlines() if line.startswith("Requires-Dist:")
    ]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site_packages = next(venv.glob("lib/python*/site-packages"))
    # The declared dependencies (and theirs), and nothing else: their files linked from this environment,
    # which saves a 5 GB reinstall of torch; no .pth of this environment (its editable install) comes along.
    dependencies = installed_closure(requires)
    assert "torch" in dependencies and "mlflow-skinny" not in dependencies and "pytest" not in dependencies
    assert link_into(site_packages, dependencies.values()) > 100
    python = str(venv / "bin" / "python")
    # This environment's pip installs into the venv; --no-index: every declared dependency must be there.
    install = run_command([sys.executable, "-m", "pip", "--python", python, "install", "--no-index", str(wheel)])
    assert install.returncode == 0, install.stderr
    check = run_command([sys.executable, "-m", "pip", "--python", python, "check"])
    assert check.returncode == 0, check.stdout

    workdir = tmp_path / "somewhere"
    workdir.mkdir()
    probe = "import image_classifier, importlib.util as u; print(image_classifier.__file__); "
    probe += "print([name for name in ('pytest', 'hypothesis', 'mlflow', 'build') if u.find_spec(name)])"
    where = run_command([python, "-c", probe], cwd=workdir)
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines() == [str(site_packages / "image_classifier" / "__init__.py"), "[]"]

    result = run_command(
        [str(venv / "bin" / "image_classifier_trainer"), "--experiment_name", "e", "--run_name", "r",
         "--dataset_folder", str(dataset), "--num_epochs", "1"],
        cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dir = workdir / "experiments" / "e" / "r"
    assert sorted(p.name for p in run_dir.iterdir()) == RUN_FILES

    # Without the mlflow extra, a tracking URI in the environment costs the listing a warning, nothing more.
    listing = run_command([str(venv / "bin" / "image_classifier_runs"), "list"], cwd=workdir,
                          env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})  # fmt: skip
    assert listing.returncode == 0 and listing.stdout.splitlines()[1].split()[:3] == ["e", "r", "completed"]
    assert "MLflow is not installed" in listing.stderr
    image = tmp_path / "image.png"
    image.write_bytes(base64.b64decode(PNG_1X1))
    predict = run_command([str(venv / "bin" / "image_classifier_predict"), "--model", str(run_dir), str(image)])
    assert predict.returncode == 0 and str(image) in predict.stdout, predict.stderr
