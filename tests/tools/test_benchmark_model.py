"""tools/benchmark_model.py: the command line, and the table's rows and columns on tiny models
(no timing asserted). The measurements are tested in tests/benchmarking/."""

import math

import pytest
import torch

from condconv_det.benchmarking.model import COLUMNS, QUICK_SIZE, TARGETS, WHOLE_COMPILED_COLUMNS

from . import load_tool


def _cells(row: str):
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _pair(cell: str):
    static, condconv = (float(v) for v in cell.split(" / "))
    return static, condconv


def _ratio(cell: str) -> float:
    return float(cell.split()[0])


def test_quick_markdown_table(capsys):
    tool = load_tool("benchmark_model")
    assert tool.main(["--quick", "--markdown", "--models", "ssd300_MNv1", "efficientnet_b0"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("# benchmark_model:")
    assert (
        f"torch {torch.__version__}" in lines[0]
        and "2 threads" in lines[0]
        and "float32" in lines[0]
        and "read bandwidth" in lines[0]
    )
    assert "benchmark_model" in captured.err  # the progress bar
    header = _cells(lines[2])
    assert header == COLUMNS
    rows = [_cells(line) for line in lines[4:] if line.startswith("| ")]
    assert [r[0] for r in rows] == ["ssd300_MNv1", "efficientnet_b0"]
    assert lines[-1].startswith("# total time")
    assert lines[-2].startswith("# CondConv experts") and "efficientnet_b0" in lines[-2]
    for cells in rows:
        assert len(cells) == len(header)
        col = dict(zip(header, cells))
        assert col["input"] == f"{QUICK_SIZE}x{QUICK_SIZE}"
        for name in header[2:]:
            if " x" in name or name.endswith("x"):
                ratio = _ratio(col[name])
                assert math.isfinite(ratio) and ratio > 0, (name, col[name])
            else:
                assert all(math.isfinite(v) and v > 0 for v in _pair(col[name])), (name, col[name])
        # Experts add the routing FCs and the kernel mixes: more multiply-adds, but few.
        assert 1.0 < _ratio(col["MAdds x"]) < 1.2
        # peak = state + step; the experts make CondConv's state larger.
        peak, state, step = (
            _pair(col[k]) for k in ("peak MB S / C", "state MB S / C", "step MB S / C")
        )
        for i in range(2):
            assert abs(peak[i] - state[i] - step[i]) <= 1.0
        assert state[1] > state[0]
        assert abs(_ratio(col["peak x"]) - peak[1] / peak[0]) <= 0.02 + 0.01 * peak[1] / peak[0]
        for name, target in [("b1 x", "latency"), ("train x", "train"), ("peak x", "memory")]:
            verdict = "pass" if _ratio(col[name]) <= TARGETS[target] else "miss"
            assert col[name].endswith(f"({verdict})"), (name, col[name])
        # A floor is the static time plus the experts' traffic: not below the static time, and
        # the time over the floor is the ratio to the static twin over the floor's.
        for t in ("b1", "b8", "train"):
            floor_x, x_floor = _ratio(col[f"floor {t} x"]), _ratio(col[f"{t} x floor"])
            assert floor_x >= 1.0, (t, floor_x)
            assert x_floor == pytest.approx(_ratio(col[f"{t} x"]) / floor_x, rel=0.02, abs=0.01)


def test_quick_inference_mode_channels_last_bfloat16_experts_plain_table(capsys):
    tool = load_tool("benchmark_model")
    threads = torch.get_num_threads()
    args = [
        "--quick",
        "--models",
        "efficientnet_b0",
        "--inference-mode",
        "--channels-last",
        "--threads",
        "1",
        "--expert-dtype",
        "bfloat16",
    ]
    assert tool.main(args) == 0
    assert torch.get_num_threads() == threads  # the tool restores the caller's setting
    lines = capsys.readouterr().out.strip().splitlines()
    assert "inference_mode" in lines[0] and "channels-last" in lines[0] and "1 threads" in lines[0]
    assert (
        "eval under inference_mode with the CondConv experts in bfloat16, channels-last, "
        in (lines[0])
    )
    assert lines[0].count("detectors") == 1
    assert " MB in bfloat16)" in lines[-2]  # the experts' line: float32 bytes, then stored
    assert lines[2].split()[0] == "model" and lines[3].split()[0] == "efficientnet_b0"


def test_quick_compiled_detector_against_eager(capsys):
    tool = load_tool("benchmark_model")
    # aot_eager: dynamo's capture of the whole detector, graph breaks and all, without inductor's
    # minutes of C++ builds.
    argv = ["--quick", "--markdown", "--threads", "1", "--models", "ssd300_MNv1"]
    assert tool.main(argv + ["--compile-detector", "--compile-backend", "aot_eager"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "torch.compile backend aot_eager" in lines[0] and "compiled/eager" in lines[1]
    header = _cells(lines[2])
    assert header == COLUMNS + WHOLE_COMPILED_COLUMNS
    col = dict(zip(header, _cells(lines[4])))
    eager, compiled, ratio = (_pair(col[name]) for name in WHOLE_COMPILED_COLUMNS)
    for i in range(2):  # static, CondConv
        assert all(math.isfinite(v[i]) and v[i] > 0 for v in (eager, compiled, ratio))
        # The ratio is the median of per-round ratios; one round here.
        assert ratio[i] == pytest.approx(compiled[i] / eager[i], rel=0.05, abs=0.01)


def test_bad_arguments_are_named(capsys):
    tool = load_tool("benchmark_model")
    with pytest.raises(SystemExit):
        tool.main(["--models", "ssd512_MNv1"])
    assert "ssd512_MNv1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--compile-detector", "--compile-backend", "tensorrt9"])
    assert "unknown --compile-backend 'tensorrt9'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            tool.main(["--device", "cuda"])
        assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_eager_mix_switches_the_native_kernel_off_for_the_run_only(capsys, monkeypatch):
    from condconv_det.layers import _condconv_fast as fast

    tool = load_tool("benchmark_model")
    seen = []
    monkeypatch.setattr(tool, "run", lambda args: seen.append(fast.native_mix_available()))
    before = fast.native_mix_available()
    assert tool.main(["--quick", "--eager-mix"]) == 0
    assert tool.main(["--quick"]) == 0
    assert seen == [False, before] and fast.native_mix_available() == before
    monkeypatch.undo()
    tool = load_tool("benchmark_model")
    assert tool.main(["--quick", "--eager-mix", "--models", "efficientnet_b0"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "eval under no_grad, eager kernel mix, contiguous (NCHW)" in first
