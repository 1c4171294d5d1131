"""MomentumSGD against torch.optim.SGD(foreach=True): the same weights bit for bit, and the same state format."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from image_classifier.model.model import Net
from image_classifier.model.optimizer import MomentumSGD


def _batches(count, batch_size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        images = torch.randn(batch_size, 3, 32, 32, generator=generator).contiguous(memory_format=torch.channels_last)
        yield images, torch.randint(0, 10, (batch_size,), generator=generator)


def _train(model, optimizer, batches):
    for images, labels in batches:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()


def _same_bits(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x.view(torch.int32), y.view(torch.int32)) and x.stride() == y.stride()
        for x, y in zip(a.state_dict().values(), b.state_dict().values())
    )


def _twins(memory_format=torch.channels_last):
    torch.manual_seed(0)
    ours = Net().to(memory_format=memory_format)
    theirs = Net().to(memory_format=memory_format)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@settings(max_examples=10, deadline=None)
@given(
    lr=st.floats(1e-5, 0.5),
    momentum=st.one_of(st.just(0.0), st.floats(0.0, 0.99)),
    batch_size=st.integers(1, 9),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_weights_are_torch_sgds_bit_for_bit(lr, momentum, batch_size, channels_last, seed):
    ours, theirs = _twins(torch.channels_last if channels_last else torch.contiguous_format)
    torch_sgd = torch.optim.SGD(theirs.parameters(), lr=lr, momentum=momentum, foreach=True)
    _train(ours, MomentumSGD(ours, lr, momentum), _batches(12, batch_size, seed))
    _train(theirs, torch_sgd, _batches(12, batch_size, seed))
    assert _same_bits(ours, theirs)


def _restarted(model: torch.nn.Module) -> torch.nn.Module:
    copy = Net().to(memory_format=torch.channels_last)
    copy.load_state_dict(model.state_dict())
    return copy


def test_state_dicts_cross_between_the_two_mid_run():
    """A checkpoint of either optimiser resumes in the other with the uninterrupted run's bits."""
    reference, model = _twins()
    reference_sgd = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, foreach=True)
    for seed in (0, 1, 2):
        _train(reference, reference_sgd, _batches(5, 4, seed))

    torch_sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    _train(model, torch_sgd, _batches(5, 4, 0))
    model = _restarted(model)
    ours = MomentumSGD(model, 0.01, 0.9)
    ours.load_state_dict(torch_sgd.state_dict())
    _train(model, ours, _batches(5, 4, 1))
    model = _restarted(model)
    torch_sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    torch_sgd.load_state_dict(ours.state_dict())
    _train(model, torch_sgd, _batches(5, 4, 2))

    assert _same_bits(model, reference)


def test_the_state_dict_is_torch_sgds():
    ours_model, theirs_model = _twins()
    ours = MomentumSGD(ours_model, 0.01, 0.9)
    theirs = torch.optim.SGD(theirs_model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    assert ours.state_dict() == theirs.state_dict()  # before the first step: no momentum buffers yet
    _train(ours_model, ours, _batches(3, 4))
    _train(theirs_model, theirs, _batches(3, 4))
    mine, torchs = ours.state_dict(), theirs.state_dict()
    assert mine["param_groups"] == torchs["param_groups"]
    assert mine["state"].keys() == torchs["state"].keys()
    for index, entry in torchs["state"].items():
        assert entry.keys() == mine["state"][index].keys() == {"momentum_buffer"}
        assert torch.equal(entry["momentum_buffer"], mine["state"][index]["momentum_buffer"])


def test_a_state_for_other_parameters_is_refused():
    model = Net()
    state = MomentumSGD(torch.nn.Linear(3, 2), 0.01, 0.9).state_dict()
    with pytest.raises(ValueError, match="other parameters"):
        MomentumSGD(model, 0.01, 0.9).load_state_dict(state)


def test_a_step_without_gradients_is_refused():
    with pytest.raises(RuntimeError, match="no gradient"):
        MomentumSGD(Net(), 0.01, 0.9).step()
