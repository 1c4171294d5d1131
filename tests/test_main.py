import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from image_classifier.config import TrainConfig
from image_classifier.main import arguments_for, build_parser, config_from_args, main
from image_classifier.model.model import Net
from image_classifier.tracking.records import read_run
from tests.conftest import PASSWORD, RUN_FILES, run_trainer, trainer_args
from tests.documentation import section

REQUIRED = ["--experiment_name", "e", "--run_name", "r"]


def test_defaults_are_the_seeds(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(REQUIRED)
    assert (args.learning_rate, args.momentum, args.num_epochs, args.num_workers, args.batch_size) == (
        0.001,
        0.9,
        2,
        2,
        4,
    )
    assert (args.seed, args.device, args.pretrained_model, args.db_pass) == (0, "auto", None, None)
    config = config_from_args(args)
    assert config.experiments_folder == Path("experiments")
    assert config.dataset_folder == Path("data/cifar_dataset")
    assert config.result_fields()["dataset_folder"] == str(tmp_path / "data" / "cifar_dataset")


def test_pretrained_model_is_relative_to_the_experiments_folder(tmp_path):
    args = build_parser().parse_args(
        [*REQUIRED, "--experiments_folder", str(tmp_path), "--pretrained_model", "a/b.pth"]
    )
    assert config_from_args(args).pretrained_model == tmp_path / "a" / "b.pth"
    args = build_parser().parse_args([*REQUIRED, "--pretrained_model", "/abs/m.pth"])
    assert config_from_args(args).pretrained_model == Path("/abs/m.pth")


def test_the_docs_document_every_option():
    table = section("training.md", "Training")
    documented = set(re.findall(r"^\| `(-[^`]+)`", table, flags=re.M)) | set(re.findall(r"`(--[a-z_-]+)`", table))
    options = {option for action in build_parser()._actions for option in action.option_strings} - {"-h", "--help"}
    assert options <= documented, options - documented


def test_every_flag_documents_its_default():
    parser = build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.default not in (None, False, "==SUPPRESS==") and not action.required:
            assert f"(default: {action.default})" in formatter._get_help_string(action) % vars(action)
    help_text = parser.format_help()
    assert "(default: None)" not in help_text
    assert "no effect on speed or results" in help_text  # --num_workers is moot with in-memory data


@pytest.mark.parametrize(
    "extra",
    [
        ["--batch_size", "0"],
        ["--num_epochs", "-1"],
        ["--learning_rate", "0"],
        ["--learning_rate", "abc"],
        ["--learning_rate", "inf"],
        ["--learning_rate", "nan"],
        ["--momentum", "1"],
        ["--momentum", "-0.1"],
        ["--num_workers", "-1"],
        ["--checkpoint_every", "-2"],
        ["--unknown_flag", "1"],
    ],
)
def test_bad_values_are_usage_errors(extra, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*REQUIRED, "--db_pass", "x", *extra])
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_password_is_required_from_flag_or_environment(monkeypatch, capsys):
    monkeypatch.delenv("DB_PASSWORD", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(REQUIRED)
    assert exit_info.value.code == 2
    assert "DB_PASSWORD" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["..", "a/b", "white space", "run_1.incomplete"])
def test_bad_names_are_usage_errors(name, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--experiment_name", "e", "--run_name", name, "--experiments_folder", str(tmp_path), "--db_pass", "x"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "error: invalid value for --run_name (not shown)" in err
    assert "Traceback" not in err and (name == ".." or name not in err.split("error:")[-1])  # ".." is in the rule
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device", "gpu"], "invalid value for --device (not shown): expected auto, cpu, cuda or cuda:<index>"),
        (["--device", "cuda:99"], "error: --device: "),  # no CUDA here, or not 100 devices
        (["--seed", "-1"], "invalid value for --seed (not shown): expected a seed from 0 to"),
        (["--seed", str(2**64)], "invalid value for --seed (not shown): expected a seed from 0 to"),
        (["--force"], "--force only applies with --resume"),
    ],
)
def test_bad_devices_seeds_and_flags_are_usage_errors_before_any_work(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*REQUIRED, "--experiments_folder", str(tmp_path), "--db_pass", "x", *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_help_shows_defaults_of_zero():
    help_text = build_parser().format_help()
    assert re.search(r"--seed SEED\s+seeds every random generator.*\(default: 0\)", help_text, flags=re.S)
    assert re.search(r"--checkpoint_every CHECKPOINT_EVERY.*?\(default:\s+0\)", help_text, flags=re.S)


def test_missing_dataset_is_one_line_error_without_the_password(tmp_path, capsys):
    code = main(
        [
            *REQUIRED,
            "--experiments_folder",
            str(tmp_path / "x"),
            "--dataset_folder",
            str(tmp_path),
            "--db_pass",
            PASSWORD,
        ]
    )
    err = capsys.readouterr().err
    assert PASSWORD not in err
    assert code == 1 and err.splitlines()[-1].startswith("error: ") and "metadata.json" in err
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_verbose_adds_the_traceback(tmp_path, capsys):
    main([*REQUIRED, "--dataset_folder", str(tmp_path), "--experiments_folder", str(tmp_path), "--db_pass", "x", "-v"])
    assert "Traceback" in capsys.readouterr().err


def test_in_process_run_logs_nothing_secret_even_at_debug(dataset, tmp_path, caplog, capsys):
    with caplog.at_level(logging.DEBUG):
        code = main([*trainer_args(dataset, tmp_path, "r", "--num_epochs", "1"), "--db_pass", PASSWORD, "-v"])
    assert code == 0
    captured = capsys.readouterr()
    assert "connected to database" in caplog.text
    for text in (caplog.text, captured.out, captured.err):
        assert PASSWORD not in text
    for path in (tmp_path / "e" / "r").iterdir():
        assert PASSWORD.encode() not in path.read_bytes()


@pytest.mark.slow
def test_end_to_end_from_another_directory(dataset, tmp_path):
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    shutil.copytree(dataset, workdir / "data" / "cifar_dataset")
    result = run_trainer(
        "--experiment_name", "e", "--run_name", "r", "--batch_size", "8", "--learning_rate", "0.02", cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    run_dir = workdir / "experiments" / "e" / "r"
    assert sorted(p.name for p in run_dir.iterdir()) == RUN_FILES
    assert "run written to experiments/e/r" in result.stdout

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["class_accuracy"]) == [
        "plane",
        "car",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert [entry["epoch"] for entry in metrics["history"]] == [1, 2]
    assert metrics["history"][-1]["test_accuracy"] == metrics["test_accuracy"]
    assert set(metrics["history"][0]) == {
        "epoch",
        "train_loss",
        "test_loss",
        "test_accuracy",
        "class_accuracy",
        "seconds",
        "images_per_second",
    }
    assert metrics["test_accuracy"] > 20  # 10 % is chance; generated classes are learnable

    net = Net()  # the notebook's own class loads the weights
    net.load_state_dict(torch.load(run_dir / "model.pth", weights_only=True))

    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["device"] == "cpu"
    assert manifest["arguments"]["batch_size"] == 8
    assert manifest["arguments"]["dataset_folder"] == "data/cifar_dataset"  # as given: no machine's paths
    assert set(manifest["versions"]) >= {"image_classifier", "python", "torch", "torchvision", "numpy"}
    assert len(manifest["dataset"]["sha256"]) == 8 and manifest["started_at"] and manifest["finished_at"]
    for path in run_dir.iterdir():
        assert PASSWORD.encode() not in path.read_bytes()
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.slow
def test_password_on_the_command_line_never_leaks(dataset, tmp_path):
    result = run_trainer(*trainer_args(dataset, tmp_path, "r", "--num_epochs", "0"), "--db_pass", "cli-secret-42", "-v")
    assert result.returncode == 0, result.stderr
    assert "cli-secret-42" not in result.stdout + result.stderr
    for path in (tmp_path / "e" / "r").iterdir():
        assert b"cli-secret-42" not in path.read_bytes()


@pytest.mark.slow
def test_existing_run_is_refused_before_any_work(dataset, tmp_path):
    run_dir = tmp_path / "e" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "model.pth").write_bytes(b"keep me")
    result = run_trainer(*trainer_args(dataset, tmp_path, "r"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: run directory {run_dir} already exists; choose another --run_name"
    assert (run_dir / "model.pth").read_bytes() == b"keep me"
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["r"]


@pytest.mark.slow
def test_zero_epochs_evaluates_a_pretrained_model(dataset, tmp_path):
    first = run_trainer(*trainer_args(dataset, tmp_path, "trained", "--num_epochs", "1"))
    assert first.returncode == 0, first.stderr
    result = run_trainer(
        *trainer_args(dataset, tmp_path, "eval", "--num_epochs", "0", "--pretrained_model", "e/trained/model.pth")
    )
    assert result.returncode == 0, result.stderr
    trained = json.loads((tmp_path / "e" / "trained" / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "e" / "eval" / "metrics.json").read_text())
    assert evaluated["history"] == []
    assert evaluated["test_accuracy"] == trained["test_accuracy"]
    assert (tmp_path / "e" / "eval" / "model.pth").read_bytes() == (
        tmp_path / "e" / "trained" / "model.pth"
    ).read_bytes()
    # No time was spent in epochs (the wall clock was shown before), and curves.png is kept, saying so.
    assert read_run(tmp_path / "e" / "eval").duration_seconds == 0.0
    assert (tmp_path / "e" / "eval" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize("content", [None, b"garbage"])
def test_bad_pretrained_model_is_one_line_error_and_leaves_nothing(dataset, tmp_path, content):
    if content is not None:
        (tmp_path / "bad.pth").write_bytes(content)
    result = run_trainer(*trainer_args(dataset, tmp_path, "r", "--pretrained_model", str(tmp_path / "bad.pth")))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("error: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "e").exists() or list((tmp_path / "e").iterdir()) == []


def test_speed_options_run_and_are_recorded(dataset, tmp_path):
    """--amp (bf16 autocast, correct on the CPU too), contiguous layout, own eval batch size, thread count."""
    speed = ["--amp", "--no-channels_last", "--eval_batch_size", "7", "--num_threads", "1", "--num_epochs", "1"]
    torch.set_num_threads(3)
    code = main([*trainer_args(dataset, tmp_path, "r"), *speed, "--db_pass", PASSWORD])
    assert code == 0
    assert torch.get_num_threads() == 3  # the caller's count back: the next run in this process starts from it
    run_dir = tmp_path / "e" / "r"
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["arguments"]["amp"] is True and manifest["arguments"]["channels_last"] is False
    assert manifest["arguments"]["eval_batch_size"] == 7 and manifest["determinism"]["torch_num_threads"] == 1
    state_dict = torch.load(run_dir / "model.pth", weights_only=True)
    assert all(tensor.is_contiguous() for tensor in state_dict.values())
    Net().load_state_dict(state_dict)


def test_a_channels_last_run_saves_the_notebook_layout(dataset, tmp_path):
    code = main([*trainer_args(dataset, tmp_path, "r", "--num_epochs", "1"), "--db_pass", PASSWORD])
    assert code == 0
    state_dict = torch.load(tmp_path / "e" / "r" / "model.pth", weights_only=True)
    assert all(tensor.is_contiguous() for tensor in state_dict.values())


_paths = st.lists(st.sampled_from(["a", "b b", "ü", "-x", "data"]), min_size=1, max_size=3).map(lambda p: Path(*p))


@given(
    values=st.fixed_dictionaries(
        {
            "learning_rate": st.floats(min_value=1e-12, max_value=1e6),
            "momentum": st.floats(min_value=0, max_value=1, exclude_max=True),
            "num_epochs": st.integers(0, 100),
            "batch_size": st.integers(1, 4096),
            "eval_batch_size": st.integers(1, 4096),
            "num_threads": st.integers(0, 64),
            "channels_last": st.booleans(),
            "amp": st.booleans(),
            "deterministic": st.booleans(),
            "checkpoint_every": st.integers(0, 1000),
            "seed": st.integers(0, 2**32 - 1),
            "device": st.sampled_from(["auto", "cpu", "cuda", "cuda:3"]),
            "resume": st.booleans(),
            "verbose": st.booleans(),
            "experiments_folder": _paths,
            "dataset_folder": _paths,
            "pretrained_model": st.none() | _paths.map(lambda path: Path("/models") / path),
        }
    )
)
def test_arguments_for_a_config_give_that_config_back(values):
    """What reproduce hands to torchrun: the trainer's own options, read back into the same TrainConfig."""
    config = TrainConfig("e", "r", **values)
    arguments = arguments_for(config)
    assert "--db_pass" not in arguments
    assert config_from_args(build_parser().parse_args(arguments)) == config
