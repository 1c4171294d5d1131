"""The peer server of benchmarks/serve_load.py: LitServe serving the same model as image_classifier_serve.

    PEER_PYTHON benchmarks/litserve_peer.py --model experiments/local_exp_test/run_1 --port 8001

Run by the interpreter of LitServe's own venv (`make litserve-venv`: LitServe is for the benchmark only, and
it pulls uvicorn[standard], whose uvloop and httptools would change the event loop and HTTP parser of our own
service in any venv that holds them). The same weights, read and checked by the package's model loader; the
same decoding and normalisation (image_classifier.images.decode_image, ServedModel.probabilities); the same
top-k answer. LitServe batches in its own inference process, here up to --max_batch_size images, waiting at
most --batch_timeout for company.

LitServe hands decode_request a form (multipart) or JSON; it has no raw-body mode. For the raw uploads its
request preparation is extended by the least work possible: the body's bytes are passed on as they are.
"""

from __future__ import annotations

import argparse
import logging

import litserve as ls
import numpy as np
from litserve.server import BaseRequestHandler

from image_classifier.images import DEFAULT_MAX_PIXELS, decode_image
from image_classifier.serving.model_request import ModelRequest
from image_classifier.serving.model_source import load_model, top_k

TOP_K = 3  # image_classifier_serve's default --top_k

_prepare_form_or_json = BaseRequestHandler._prepare_request


async def _prepare_request(self, request, request_type):
    if request.headers.get("content-type", "").startswith("image/"):
        return {"content": await request.body()}
    return await _prepare_form_or_json(self, request, request_type)


BaseRequestHandler._prepare_request = _prepare_request


class ImageClassifierAPI(ls.LitAPI):
    def __init__(self, model: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_path = model

    def setup(self, device) -> None:
        import torch

        torch.set_num_threads(1)  # as image_classifier_serve's --torch_threads default
        self.model = load_model(ModelRequest(self.model_path))

    def decode_request(self, request) -> np.ndarray:
        content = request["content"] if "content" in request else next(iter(request.values()))
        payload = content if isinstance(content, bytes) else content.file.read()
        return decode_image(payload, DEFAULT_MAX_PIXELS, self.model.image_size)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.model.probabilities(images)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, probabilities: np.ndarray) -> dict:
        return {"predictions": top_k(probabilities, self.model.classes, TOP_K)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max_batch_size", type=int, default=32)
    parser.add_argument("--batch_timeout", type=float, default=0.002, help="seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    api = ImageClassifierAPI(
        args.model, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout, api_path="/predict"
    )
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, healthcheck_path="/ready")
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
