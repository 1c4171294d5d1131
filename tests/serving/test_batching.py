"""The micro-batcher with a small real computation in place of the model (the sum of each image)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from image_classifier.serving.batching import BatcherStopped, MicroBatcher

LONG_WAIT_MS = 60_000  # a window no test should ever sit through


class SumModel:
    """Each image's pixel sum as its 'probabilities'; remembers the batch sizes and the thread it ran in."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.fail = fail

    def __call__(self, images: np.ndarray):
        self.threads.add(threading.current_thread().name)
        self.batches.append(len(images))
        if self.fail:
            raise RuntimeError("the model broke")
        return images.reshape(len(images), -1).sum(axis=1, dtype=np.int64)[:, None], "model-1"


def images(value: int, count: int = 1) -> np.ndarray:
    return np.full((count, 3, 32, 32), value, dtype=np.uint8)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=30))


def test_a_lone_request_does_not_wait_for_the_window():
    async def scenario():
        model = SumModel()
        batcher = MicroBatcher(model, max_batch_size=32, max_wait_ms=LONG_WAIT_MS)
        batcher.start()
        result, tag = await batcher.submit(images(1))
        await batcher.stop()
        return model, result, tag

    model, result, tag = run(scenario())  # would time out after 30 s if the 60 s window were held
    assert model.batches == [1] and result.tolist() == [[3 * 32 * 32]] and tag == "model-1"
    assert model.threads == {"inference_0"}  # off the event loop's thread


def test_concurrent_requests_share_a_forward_pass_and_each_gets_its_own_answer():
    async def scenario():
        model = SumModel()
        batcher = MicroBatcher(model, max_batch_size=8, max_wait_ms=0)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(images(value)) for value in range(20)))
        await batcher.stop()
        return model, results

    model, results = run(scenario())
    assert [int(r[0][0, 0]) for r in results] == [value * 3 * 32 * 32 for value in range(20)]
    assert sum(model.batches) == 20 and max(model.batches) == 8 and len(model.batches) < 20


def test_the_window_waits_for_announced_requests_only():
    async def late_request(batcher):
        with batcher.announce():
            await asyncio.sleep(0.2)  # still decoding when the first request opens the batch
        return await batcher.submit(images(2))

    async def scenario():
        model = SumModel()
        batcher = MicroBatcher(model, max_batch_size=8, max_wait_ms=LONG_WAIT_MS)
        batcher.start()
        late = asyncio.create_task(late_request(batcher))
        await asyncio.sleep(0)  # let it announce itself
        first = await batcher.submit(images(1))
        second = await late
        await batcher.stop()
        return model, first, second

    model, first, second = run(scenario())
    assert model.batches == [2]
    assert int(first[0][0, 0]) == 3 * 32 * 32 and int(second[0][0, 0]) == 2 * 3 * 32 * 32


def test_a_request_s_images_stay_together_and_a_larger_one_runs_alone():
    async def scenario():
        model = SumModel()
        batcher = MicroBatcher(model, max_batch_size=4, max_wait_ms=0)
        batcher.start()
        results = await asyncio.gather(
            batcher.submit(images(1, 3)), batcher.submit(images(2, 3)), batcher.submit(images(3, 6))
        )
        await batcher.stop()
        return model, results

    model, results = run(scenario())
    assert model.batches == [3, 3, 6]
    assert [len(r[0]) for r in results] == [3, 3, 6]


def test_a_failing_batch_fails_its_requests_and_the_worker_lives_on():
    async def scenario():
        model = SumModel(fail=True)
        batcher = MicroBatcher(model, max_batch_size=4, max_wait_ms=0)
        batcher.start()
        outcomes = await asyncio.gather(batcher.submit(images(1)), batcher.submit(images(2)), return_exceptions=True)
        model.fail = False
        after = await batcher.submit(images(1))
        await batcher.stop()
        return outcomes, after

    outcomes, after = run(scenario())
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert int(after[0][0, 0]) == 3 * 32 * 32


def test_stop_answers_what_is_queued_then_refuses_new_work():
    async def scenario():
        model = SumModel()
        batcher = MicroBatcher(model, max_batch_size=2, max_wait_ms=0)
        batcher.start()
        queued = [asyncio.create_task(batcher.submit(images(v))) for v in range(5)]
        await asyncio.sleep(0)
        await batcher.stop()
        with pytest.raises(BatcherStopped):
            await batcher.submit(images(1))
        return [task.result() for task in queued]

    results = run(scenario())
    assert [int(r[0][0, 0]) for r in results] == [v * 3 * 32 * 32 for v in range(5)]


def test_images_of_another_size_go_in_a_batch_of_their_own():
    """After a reload to a model of another input size, requests decoded for either model are queued at once:
    a batch never mixes sizes, and every request is answered."""

    async def scenario():
        model = SumModel()
        batcher = MicroBatcher(model, max_batch_size=64, max_wait_ms=0)
        batcher.start()
        sizes = [32, 32, 64, 64, 32]
        requests = [np.full((1, 3, size, size), 1, dtype=np.uint8) for size in sizes]
        results = await asyncio.gather(*(batcher.submit(request) for request in requests))
        await batcher.stop()
        return model, sizes, results

    model, sizes, results = run(scenario())
    assert [int(result[0][0, 0]) for result in results] == [3 * size * size for size in sizes]
    assert model.batches == [2, 2, 1]
