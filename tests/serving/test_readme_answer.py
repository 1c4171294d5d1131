"""The docs' `/predict` answer is the service's own: the example run's answer to the docs' cat.png,
an image of the sample folder that `make images` generates, with every probability as the service writes it."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from image_classifier.data.synthetic import generate_image_folder
from image_classifier.serving.app import create_app
from image_classifier.serving.model_request import ModelRequest
from image_classifier.serving.settings import ServeSettings
from tests.conftest import REPO_ROOT
from tests.documentation import page_text

SERVING = page_text("serving.md")
EXAMPLE_RUN = "experiments/local_exp_test/run_1"


def _readme_answer() -> dict:
    block = re.search(r"The first command's answer for `cat.png`.*?```json\n(.*?)```", SERVING, re.DOTALL)
    assert block, "docs/serving.md shows no /predict answer"
    return json.loads(block.group(1))


def test_the_readme_answer_is_what_the_service_answers(tmp_path, monkeypatch):
    # `make images`, then docs/serving.md's `cp "$(ls data/sample_images/test/cat/*.png | head -n 1)" cat.png`
    folder = generate_image_folder(tmp_path / "sample_images", 1000, 200, seed=0, min_side=20, max_side=72)
    cat_png = sorted((folder / "test" / "cat").glob("*.png"))[0]
    monkeypatch.chdir(REPO_ROOT)  # the docs' paths are relative to the repository
    with TestClient(create_app(ServeSettings(model=ModelRequest(EXAMPLE_RUN)))) as client:
        answer = client.post("/predict", content=cat_png.read_bytes(), headers={"Content-Type": "image/png"}).json()
    shown = _readme_answer()
    assert answer["model"] == shown["model"]
    assert [(p["class"], p["label"]) for p in answer["predictions"]] == [
        (p["class"], p["label"]) for p in shown["predictions"]
    ]
    # Not rounded: the docs' digits are the service's (to float32 noise across machines' kernels).
    for got, written in zip(answer["predictions"], shown["predictions"]):
        assert got["probability"] == pytest.approx(written["probability"], rel=1e-5, abs=1e-7)
        assert len(repr(written["probability"])) > 8
