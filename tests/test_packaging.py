"""The built wheel: declared dependencies, package data, and the command from a fresh environment."""

import re
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, RUN_FILES, run_command

pytestmark = pytest.mark.slow


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


def test_wheel_in_a_fresh_venv_trains_from_any_directory(wheel, dataset, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # torch & co. come from this environment through a path entry (its .pth files, such as the editable
    # install of this checkout, are not processed there): no 5 GB reinstall, and no source tree in sight.
    site_packages = next(venv.glob("lib/python*/site-packages"))
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    # The venv's own old setuptools would shadow the one torch needs (>= 77) from the path entry.
    subprocess.run([str(python), "-m", "pip", "uninstall", "--yes", "--quiet", "setuptools"], check=True)
    # --no-index: every declared dependency must already be satisfied, and nothing is fetched.
    install = run_command([str(python), "-m", "pip", "install", "--no-index", "--quiet", str(wheel)])
    assert install.returncode == 0, install.stderr

    workdir = tmp_path / "somewhere"
    workdir.mkdir()
    where = run_command([str(python), "-c", "import image_classifier; print(image_classifier.__file__)"], cwd=workdir)
    assert where.stdout.startswith(str(site_packages)), where.stdout

    result = run_command(
        [str(venv / "bin" / "image_classifier_trainer"), "--experiment_name", "e", "--run_name", "r",
         "--dataset_folder", str(dataset), "--num_epochs", "1"],
        cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dir = workdir / "experiments" / "e" / "r"
    assert sorted(p.name for p in run_dir.iterdir()) == RUN_FILES
