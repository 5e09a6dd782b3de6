"""Loading checkpoints: files that cannot be read, checkpoints that do not fit the model,
resuming from the newest checkpoint that can be read, and the exact loading of weights for
inference. Every failure names the file and leaves the model as it was."""

import argparse
import os

import pytest
import torch

from condconv_det.checkpoint import (
    CheckpointMismatchError,
    CondConvCheckpointer,
    UnreadableCheckpointError,
    load_weights_exact,
)
from condconv_det.layers import CondConv2d, CondConvRouter


class Routed(torch.nn.Module):
    """A router and a CondConv layer it feeds (block routing), then a plain head."""

    def __init__(self, experts: int = 4, classes: int = 3):
        super().__init__()
        self.router = CondConvRouter(8, experts)
        self.conv = CondConv2d(8, 8, 3, padding=1, num_experts=experts)
        self.head = torch.nn.Conv2d(8, classes, 1)

    def forward(self, x):
        return self.head(self.conv(x, self.router(x)))


def _save(model, path, **extra):
    torch.save({"model": model.state_dict(), **extra}, path)
    return str(path)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "is empty (0 bytes)"),
        (b"this is a text file, not a checkpoint\n", "is not a PyTorch checkpoint"),
        (None, "is cut short or corrupt"),  # the first half of a real checkpoint
    ],
)
def test_a_file_that_cannot_be_read_is_named(tmp_path, content, reason):
    path = tmp_path / "model.pth"
    if content is None:
        _save(Routed(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    model = Routed()
    before = _snapshot(model)
    with pytest.raises(UnreadableCheckpointError) as info:
        CondConvCheckpointer(model).load(str(path))
    assert str(path) in str(info.value) and reason in str(info.value)
    assert "weights_only=False" not in str(info.value)
    assert _unchanged(model, before)


def test_a_tensor_saved_alone_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(UnreadableCheckpointError, match="holds a Tensor, not a state dict"):
        CondConvCheckpointer(Routed()).load(str(path))


def test_a_checkpoint_with_arbitrary_objects_is_refused_without_advising_unsafe_loading(tmp_path):
    path = tmp_path / "objects.pth"
    torch.save({"model": Routed().state_dict(), "extra": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnreadableCheckpointError) as info:
        CondConvCheckpointer(Routed()).load(str(path))
    assert "holds Python objects" in str(info.value) and "weights_only=False" not in str(info.value)


@pytest.mark.parametrize(
    "other,expected",
    [
        (
            lambda: torch.nn.Sequential(torch.nn.Linear(4, 4)),
            "missing keys",
        ),  # another architecture
        (lambda: Routed(experts=8), "shape mismatches"),  # other experts
        (lambda: Routed(classes=5), "head.weight: checkpoint (5, 8, 1, 1) vs model (3, 8, 1, 1)"),
    ],
)
def test_strict_loading_refuses_a_checkpoint_of_another_model(tmp_path, other, expected):
    path = _save(other(), tmp_path / "other.pth")
    model = Routed()
    before = _snapshot(model)
    with pytest.raises(CheckpointMismatchError) as info:
        CondConvCheckpointer(model).load(path)
    message = str(info.value)
    assert path in message and expected in message and "MODEL.WEIGHTS_MATCH" in message
    assert _unchanged(model, before)


def test_a_checkpoint_without_the_routers_is_refused(tmp_path):
    source = Routed()
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith("router.")}
    path = tmp_path / "no_routers.pth"
    torch.save({"model": sd}, path)
    for match in ("strict", "pretrained"):
        with pytest.raises(CheckpointMismatchError, match="router.fc.weight"):
            CondConvCheckpointer(Routed(), match=match).load(str(path))


def test_pretrained_loads_a_checkpoint_smaller_than_the_model(tmp_path):
    # The routed block pretrained, the head new: it keeps its initialisation.
    source = Routed()
    sd = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    path = tmp_path / "backbone.pth"
    torch.save({"model": sd}, path)
    model = Routed()
    head = model.head.weight.clone()
    CondConvCheckpointer(model, match="pretrained").load(str(path))
    assert torch.equal(model.conv.weight, source.conv.weight)
    assert torch.equal(model.head.weight, head)
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        CondConvCheckpointer(Routed()).load(str(path))  # strict, the default


def test_partial_loads_what_fits_and_refuses_a_foreign_checkpoint(tmp_path):
    source = Routed(classes=5)  # fine-tuning to 3 classes: the head does not fit
    model = Routed(classes=3)
    head = model.head.weight.clone()
    CondConvCheckpointer(model, match="partial").load(_save(source, tmp_path / "five.pth"))
    assert torch.equal(model.conv.weight, source.conv.weight) and torch.equal(
        model.head.weight, head
    )
    foreign = _save(torch.nn.Sequential(torch.nn.Linear(4, 4)), tmp_path / "foreign.pth")
    with pytest.raises(CheckpointMismatchError, match="Not one tensor of it fits"):
        CondConvCheckpointer(Routed(), match="partial").load(foreign)


def test_an_unknown_match_is_refused():
    with pytest.raises(ValueError, match="MODEL.WEIGHTS_MATCH must be one of"):
        CondConvCheckpointer(Routed(), match="loose")


def _static_conv_checkpoint(tmp_path):
    """A static 3x3 conv saved under the name of :class:`Routed`'s CondConv layer."""
    torch.manual_seed(0)
    static = torch.nn.Conv2d(8, 8, 3, padding=1)
    return static, _save(torch.nn.ModuleDict({"conv": static}), tmp_path / "static.pth")


def test_upcycle_noise_sets_the_experts_apart_and_the_model_still_computes_the_static_one(
    tmp_path,
):
    from condconv_det.config import get_cfg
    from condconv_det.engine import Trainer

    static, path = _static_conv_checkpoint(tmp_path)
    x = torch.randn(2, 8, 6, 6)
    spreads = []
    for noise in (0.0, 0.01, 0.5):
        cfg = get_cfg()
        cfg.MODEL.CONDCONV.UPCYCLE_NOISE, cfg.MODEL.WEIGHTS_MATCH = noise, "pretrained"
        model = Routed(experts=4)
        Trainer.build_checkpointer(model, cfg).load(path)  # no head in the checkpoint
        model.head = torch.nn.Identity()
        torch.testing.assert_close(model(x), static(x), rtol=1e-5, atol=1e-5)
        weight = model.conv.weight
        spreads.append((weight - weight.mean(dim=0)).std().item() / static.weight.std().item())
    assert spreads[0] == 0 and spreads[1] == pytest.approx(0.01, rel=0.2)
    assert spreads[2] == pytest.approx(0.5, rel=0.2)
    with pytest.raises(ValueError, match="MODEL.CONDCONV.UPCYCLE_NOISE must be >= 0"):
        CondConvCheckpointer(Routed(), upcycle_noise=-0.1)


def test_upcycling_draws_the_noise_layer_after_layer_in_the_models_order(tmp_path):
    # The same experts in every process: the order of the kernels, not the process's hash seed
    # (which orders a set of names), decides which noise each layer gets.
    from condconv_det.checkpoint import upcycle_state_dict
    from condconv_det.config import get_cfg
    from condconv_det.engine import Trainer

    names = [f"block{i}" for i in range(8)]
    model = torch.nn.ModuleDict({n: CondConv2d(4, 4, 3, num_experts=4) for n in names})
    torch.manual_seed(0)
    static = {f"{n}.weight": torch.randn(4, 4, 3, 3) for n in names}
    static.update({f"{n}.bias": torch.randn(4) for n in names})
    path = str(tmp_path / "static.pth")
    torch.save({"model": static}, path)
    cfg = get_cfg()
    cfg.MODEL.WEIGHTS_MATCH = "pretrained"
    Trainer.build_checkpointer(model, cfg).load(path)
    in_order = {k: static[k] for k in model.state_dict() if k in static}
    expected = upcycle_state_dict(in_order, model, noise=cfg.MODEL.CONDCONV.UPCYCLE_NOISE)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_upcycled_sigmoid_routing_starts_at_its_uniform_value_whatever_the_temperature(tmp_path):
    static, path = _static_conv_checkpoint(tmp_path)
    x = torch.randn(2, 8, 6, 6)
    for temperature in (1.0, 0.5, 3.0):
        model = Routed(experts=8)
        model.router = CondConvRouter(8, 8, temperature=temperature)
        CondConvCheckpointer(model, match="pretrained").load(path)
        torch.testing.assert_close(model.router(x), torch.full((2, 8), 8**-0.5))  # 1 / sqrt(E)
        model.head = torch.nn.Identity()
        torch.testing.assert_close(model(x), static(x), rtol=1e-5, atol=1e-5)


def test_upcycled_softmax_routers_can_keep_their_init_and_the_model_computes_the_static_one(
    tmp_path,
):
    from condconv_det.config import get_cfg
    from condconv_det.engine import Trainer

    static, path = _static_conv_checkpoint(tmp_path)
    x = torch.randn(3, 8, 6, 6)
    cfg = get_cfg()
    cfg.MODEL.WEIGHTS_MATCH, cfg.MODEL.CONDCONV.UPCYCLE_NOISE = "pretrained", 0.0
    cfg.MODEL.CONDCONV.UPCYCLE_ROUTERS = "init"
    model = Routed(experts=4)
    model.router = CondConvRouter(8, 4, activation="softmax")
    router = {k: v.clone() for k, v in model.router.state_dict().items()}
    Trainer.build_checkpointer(model, cfg).load(path)
    assert all(torch.equal(v, router[k]) for k, v in model.router.state_dict().items())
    routing = model.router(x)
    assert (routing.max(dim=0).values - routing.min(dim=0).values).max() > 0.01  # per image
    model.head = torch.nn.Identity()
    torch.testing.assert_close(model(x), static(x), rtol=1e-5, atol=1e-5)
    # The default: every router at the same routing for all inputs.
    cfg.MODEL.CONDCONV.UPCYCLE_ROUTERS = "uniform"
    Trainer.build_checkpointer(model, cfg).load(path)
    assert not model.router.fc.weight.any()
    # Sigmoid shares do not sum to one: keeping the routers would not give the static model.
    sigmoid = Routed(experts=4)
    cfg.MODEL.CONDCONV.UPCYCLE_ROUTERS = "init"
    with pytest.raises(ValueError, match="UPCYCLE_ROUTERS 'init' needs softmax routing"):
        Trainer.build_checkpointer(sigmoid, cfg).load(path)
    with pytest.raises(ValueError, match="UPCYCLE_ROUTERS must be one of"):
        CondConvCheckpointer(Routed(), upcycle_routers="keep")


def test_resume_falls_back_to_the_newest_checkpoint_that_can_be_read(tmp_path, caplog):
    model = Routed()
    checkpointer = CondConvCheckpointer(model, str(tmp_path))
    for it, value in ((99, 1.0), (199, 2.0)):
        torch.nn.init.constant_(model.head.weight, value)
        checkpointer.save(f"model_{it:07d}", iteration=it)
    torch.nn.init.constant_(model.head.weight, 3.0)
    checkpointer.save("model_final", iteration=299)
    final = tmp_path / "model_final.pth"
    final.write_bytes(final.read_bytes()[:100])  # cut short by a disk fault
    os.utime(tmp_path / "model_0000099.pth", (1, 1))  # the older one is older

    resumed = Routed()
    loaded = CondConvCheckpointer(resumed, str(tmp_path)).resume_or_load("", resume=True)
    assert loaded["iteration"] == 199
    assert torch.equal(resumed.head.weight, torch.full_like(resumed.head.weight, 2.0))
    assert (
        "model_final.pth" in caplog.text and "newest checkpoint that could be read" in caplog.text
    )


def test_resume_with_no_readable_checkpoint_lists_every_file(tmp_path):
    model = Routed()
    CondConvCheckpointer(model, str(tmp_path)).save("model_final", iteration=9)
    (tmp_path / "model_final.pth").write_bytes(b"")
    with pytest.raises(UnreadableCheckpointError) as info:
        CondConvCheckpointer(Routed(), str(tmp_path)).resume_or_load("", resume=True)
    assert "cannot be resumed" in str(info.value) and "model_final.pth" in str(info.value)


def test_resume_into_a_changed_model_is_not_a_fallback(tmp_path):
    CondConvCheckpointer(Routed(), str(tmp_path)).save("model_final", iteration=9)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        CondConvCheckpointer(Routed(experts=8), str(tmp_path), match="partial").resume_or_load(
            "", resume=True
        )


def test_training_state_that_does_not_fit_names_the_checkpoint(tmp_path):
    model = Routed()
    one_group = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 8, 5, 5)).sum().backward()
    one_group.step()
    CondConvCheckpointer(model, str(tmp_path), optimizer=one_group).save("model_final", iteration=3)
    two_groups = torch.optim.SGD(
        [
            {"params": model.router.parameters()},
            {"params": list(model.conv.parameters()) + list(model.head.parameters())},
        ],
        lr=0.1,
    )
    with pytest.raises(CheckpointMismatchError) as info:
        CondConvCheckpointer(model, str(tmp_path), optimizer=two_groups).resume_or_load(
            "", resume=True
        )
    assert "model_final.pth" in str(info.value) and "training state" in str(info.value)


def test_load_weights_exact_fills_every_tensor_and_ignores_the_training_state(tmp_path):
    source = Routed()
    path = _save(source, tmp_path / "model.pth", iteration=7, optimizer={"state": {}})
    model = Routed()
    load_weights_exact(model, path)
    assert _unchanged(model, _snapshot(source))
    before = _snapshot(model)
    load_weights_exact(model, "")  # no weights: the model as it was
    assert _unchanged(model, before)


def test_load_weights_exact_refuses_what_does_not_fit(tmp_path):
    model = Routed()
    before = _snapshot(model)
    with pytest.raises(CheckpointMismatchError, match="MODEL.WEIGHTS_MATCH strict"):
        load_weights_exact(model, _save(Routed(experts=8), tmp_path / "other.pth"))
    sd = {k: v for k, v in Routed().state_dict().items() if not k.startswith("head.")}
    torch.save({"model": sd}, tmp_path / "part.pth")
    with pytest.raises(CheckpointMismatchError, match="head.weight"):
        load_weights_exact(model, str(tmp_path / "part.pth"))
    with pytest.raises(FileNotFoundError):
        load_weights_exact(model, str(tmp_path / "missing.pth"))
    assert _unchanged(model, before)
