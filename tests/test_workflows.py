"""The GitHub workflows: the training workflow passes only flags the trainer knows, with matching types."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from image_classifier.main import build_parser
from image_classifier.run_dir import CHECKPOINT_FILE, INCOMPLETE_SUFFIX
from tests.conftest import REPO_ROOT

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
TRAINING = yaml.safe_load((WORKFLOWS / "training.yaml").read_text())
INPUTS = TRAINING[True]["workflow_dispatch"]["inputs"]  # YAML 1.1 reads the key `on` as True
INPUT_TYPES = {"number": (int, float), "string": (str, Path), "choice": (str, Path), "boolean": (bool,)}


def trainer_actions() -> dict:
    return {option: action for action in build_parser()._actions for option in action.option_strings}


def parser_value_type(action) -> type:
    if action.type in (None, Path):
        return action.type or str
    for probe in ("1", "0.5", "0"):  # a value each checked type accepts
        try:
            return type(action.type(probe))
        except Exception:
            continue
    raise AssertionError(f"cannot tell the type of {action.option_strings}")


def training_steps() -> list[dict]:
    return TRAINING["jobs"]["train"]["steps"]


def flags_passed() -> dict[str, str]:
    """`--flag "$VARIABLE"` pairs in the step that runs the trainer."""
    (step,) = [step for step in training_steps() if "docker/run_training.sh" in step.get("run", "")]
    return dict(re.findall(r"(--\w+) \"?\$(\w+)", step["run"]))


def training_step() -> dict:
    (step,) = [step for step in training_steps() if "docker/run_training.sh" in step.get("run", "")]
    return step


def input_of(variable: str) -> str | None:
    step_env = training_step()["env"]
    expression = {**TRAINING["jobs"]["train"]["env"], **step_env}[variable]
    match = re.fullmatch(r"\$\{\{ inputs\.(\w+) \}\}", expression)
    return match.group(1) if match else None


@pytest.mark.parametrize("flag, variable", sorted(flags_passed().items()))
def test_every_flag_exists_in_the_trainer_with_a_matching_type(flag, variable):
    actions = trainer_actions()
    assert flag in actions, f"{flag} is not an option of image_classifier_trainer"
    name = input_of(variable)
    if name is None:  # built from several inputs, e.g. "/data/$DATASET"
        return
    declared = INPUTS[name]
    assert parser_value_type(actions[flag]) in INPUT_TYPES[declared["type"]]
    if declared["type"] == "number" and "default" in declared:
        assert declared["default"] == actions[flag].default


def test_every_input_is_used():
    text = (WORKFLOWS / "training.yaml").read_text()
    for name in INPUTS:
        assert f"${{{{ inputs.{name} }}}}" in text, f"input {name} is never used"
    assert set(flags_passed()) >= {f"--{name}" for name in INPUTS} - {
        "--dataset",
        "--pretrained_model",
        "--resume",
    }
    assert '--pretrained_model "$PRETRAINED_MODEL"' in text
    assert "args+=(--resume)" in text


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS.glob("*.yaml")), ids=lambda path: path.name)
def test_no_expression_inside_shell_and_no_secret_on_a_command_line(workflow):
    for job in yaml.safe_load(workflow.read_text())["jobs"].values():
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), f"{step.get('name')}: inputs must reach shell through env"
            if "uses" in step:
                assert re.search(r"@[0-9a-f]{40}$", step["uses"]), f"{step['uses']} is not pinned to a commit"


def test_the_password_reaches_the_container_only_as_an_environment_variable():
    (step,) = [step for step in training_steps() if "docker/run_training.sh" in step.get("run", "")]
    assert step["env"]["DB_PASSWORD"] == "${{ secrets.DB_PASSWORD }}"
    assert "--db_pass" not in (WORKFLOWS / "training.yaml").read_text()
    assert "--env DB_PASSWORD " in (REPO_ROOT / "docker" / "run_training.sh").read_text()


def test_job_summary_table():
    run_dir = REPO_ROOT / "experiments" / "local_exp_test" / "run_1"
    script = REPO_ROOT / ".github" / "scripts" / "job_summary.py"
    table = subprocess.run([sys.executable, str(script), str(run_dir)], capture_output=True, text=True, check=True)
    assert "| plane |" in table.stdout and "| **total** |" in table.stdout


def trainer_arguments_of_the_training_step(tmp_path: Path, **inputs: str) -> list[str]:
    """Run the training step's shell script as the runner would, with a stand-in docker/run_training.sh that
    records the arguments it gets (NUL-separated) instead of starting a container."""
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "run_training.sh").write_text('printf "%s\\0" "$@" > "$ARGUMENTS_FILE"\n')
    values = {"experiment_name": "e", "run_name": "r", "dataset": "sample_dataset", "pretrained_model": ""}
    values.update({name: str(INPUTS[name].get("default", "")) for name in INPUTS if name not in values})
    values.update(inputs)
    env = {"PATH": "/usr/bin:/bin", "ARGUMENTS_FILE": str(tmp_path / "arguments"), "DB_PASSWORD": "x"}
    for variable in {**TRAINING["jobs"]["train"]["env"], **training_step()["env"]}:
        name = input_of(variable)
        if name is not None:
            value = values[name]
            env[variable] = str(value).lower() if isinstance(value, bool) else value  # as GitHub renders booleans
    subprocess.run(["bash", "-e", "-c", training_step()["run"]], cwd=tmp_path, env=env, check=True)
    return (tmp_path / "arguments").read_text().split("\0")[:-1]


@pytest.mark.parametrize("resume", [False, True])
def test_the_resume_input_passes_resume_to_the_trainer(resume, tmp_path):
    assert INPUTS["resume"]["type"] == "boolean" and INPUTS["resume"]["default"] is False
    arguments = trainer_arguments_of_the_training_step(tmp_path, resume=resume)
    parsed = build_parser().parse_args(arguments)  # the trainer accepts what the workflow passes
    assert parsed.resume is resume
    assert (parsed.experiment_name, parsed.run_name, str(parsed.dataset_folder)) == ("e", "r", "/data/sample_dataset")


def test_an_unfinished_run_is_uploaded_when_the_job_fails_is_cancelled_or_times_out():
    steps = training_steps()
    (upload,) = [step for step in steps if step.get("if") == "failure() || cancelled()"]
    assert upload["uses"].startswith("actions/upload-artifact@")
    # The folder the trainer keeps an unfinished run in, with its checkpoint.
    assert upload["with"]["path"] == (
        f"experiments/${{{{ inputs.experiment_name }}}}/${{{{ inputs.run_name }}}}{INCOMPLETE_SUFFIX}/"
    )
    assert steps.index(upload) > steps.index(training_step())
    # A timed-out training step fails (failure()) and leaves the job time to upload; the job's own limit cancels.
    assert training_step()["timeout-minutes"] < TRAINING["jobs"]["train"]["timeout-minutes"]
    assert CHECKPOINT_FILE in upload["name"]


def test_the_image_is_versioned_from_the_whole_history():
    (checkout,) = [step for step in training_steps() if step.get("uses", "").startswith("actions/checkout@")]
    assert checkout["with"]["fetch-depth"] == 0  # a shallow clone gives setuptools-scm a wrong commit count
