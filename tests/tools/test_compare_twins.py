"""tools/compare_twins.py: reads each twin's final COCO evaluation and prints them side by side."""

import json
import os

import pytest

from . import load_tool

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "shapes", "ssd_condconv_MNv1.yaml"
)


def _metrics(path, ap):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n")
        f.write(json.dumps({"iteration": 9, "bbox/AP": ap - 5, "bbox/AP50": 1.0}) + "\n")  # older
        last = {
            f"bbox/{m}": ap + i for i, m in enumerate(["AP", "AP50", "AP75", "APs", "APm", "APl"])
        }
        last["bbox/APl"] = float("nan")  # COCO's value for a size class without objects
        f.write(json.dumps({"iteration": 19, "bbox/AP-circle": ap / 2, **last}) + "\n")


def test_side_by_side_table_from_finished_runs(tmp_path, capsys):
    tool = load_tool("compare_twins")
    _metrics(tmp_path / "condconv" / "seed0", 30.0)
    _metrics(tmp_path / "static" / "seed0", 27.5)
    argv = ["--config-file", CONFIG, "--output-dir", str(tmp_path), "--skip-train"]
    assert tool.main(argv + ["--from-static", "0"]) == 0
    out = capsys.readouterr().out
    assert "| box AP | 30.0 | 27.5 | +2.5 |" in out
    assert "| box AP50 | 31.0 | 28.5 | +2.5 |" in out
    assert "| box APl | - | - |  |" in out
    assert (
        "|   AP circle | 15.0 | 13.8 | +1.2 |" in out
        or "|   AP circle | 15.0 | 13.8 | +1.3 |" in out
    )
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("|")}
    condconv_params, static_params = (float(v) for v in rows["parameters (M)"].split("|")[2:4])
    condconv_madds, static_madds = (float(v) for v in rows["multiply-adds (M)"].split("|")[2:4])
    assert condconv_params > 2 * static_params  # eight experts in the last blocks
    assert static_madds < condconv_madds < 1.2 * static_madds  # CondConv's promise: cheap
    assert float(rows["in CondConv experts (M)"].split("|")[3]) == 0.0
    assert "128x128" in rows["input size"]


def test_missing_run_says_to_train_first(tmp_path):
    tool = load_tool("compare_twins")
    with pytest.raises(FileNotFoundError, match="train first"):
        tool.main(["--config-file", CONFIG, "--output-dir", str(tmp_path), "--skip-train"])
    with pytest.raises(FileNotFoundError, match="train first"):
        tool.main(
            ["--config-file", CONFIG, "--output-dir", str(tmp_path), "--skip-train"]
            + ["--from-static", "0"]
        )


def test_bad_arguments_are_named(tmp_path, capsys):
    tool = load_tool("compare_twins")
    with pytest.raises(SystemExit):
        tool.main(["--config-file", str(tmp_path / "nope.yaml")])
    assert "nope.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--config-file", CONFIG, "SOLVER.MAX_ITER"])
    assert "KEY VALUE" in capsys.readouterr().err


def test_seeds_give_mean_spread_and_paired_difference(tmp_path, capsys):
    tool = load_tool("compare_twins")
    opts = ["MODEL.CONDCONV.STATIC_KERNEL", "True", "SOLVER.MAX_ITER", "10"]
    from condconv_det.twins import twin_runs

    runs = twin_runs(CONFIG, opts, range(3), str(tmp_path))
    # The static twin is trained without the CondConv-only key, and with 0 experts.
    static_opts = runs["static"][0].opts
    assert "MODEL.CONDCONV.STATIC_KERNEL" not in static_opts
    assert static_opts[-8:] == [
        *("MODEL.CONDCONV.NUM_EXPERTS", "0"),
        *("MODEL.SSD.EXTRA_NUM_EXPERTS", "0", "MODEL.SSD.HEAD_NUM_EXPERTS", "0"),
        *("SEED", "0"),
    ]
    assert "SOLVER.MAX_ITER" in static_opts
    # ... so its runs are the same for another CondConv variant with the same solver.
    other = twin_runs(
        CONFIG,
        ["MODEL.CONDCONV.EXPERT_DROPOUT", "0.1", "SOLVER.MAX_ITER", "10"],
        range(3),
        str(tmp_path),
    )
    assert [r.output_dir for r in other["static"]] == [r.output_dir for r in runs["static"]]
    assert other["CondConv"][0].output_dir != runs["CondConv"][0].output_dir
    for seed, (cc, st) in enumerate([(30.0, 27.0), (32.0, 28.0), (31.0, 29.0)]):
        for run, ap in ((runs["CondConv"][seed], cc), (runs["static"][seed], st)):
            _metrics(run.output_dir, ap)
    assert (
        tool.main(
            [
                "--config-file",
                CONFIG,
                "--output-dir",
                str(tmp_path),
                "--seeds",
                "3",
                "--skip-train",
                "--from-static",
                "0",
                *opts,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "3 seeds (mean ± standard deviation)" in out
    # CondConv 31.0 +- 1.0, static 28.0 +- 1.0; differences 3, 4, 2: +3.0 +- 1.0.
    assert "| box AP | 31.0 ± 1.0 | 28.0 ± 1.0 | +3.0 ± 1.0 |" in out
    assert "| AP per seed | 30.0 / 32.0 / 31.0 | 27.0 / 28.0 / 29.0 | |" in out


def test_a_run_of_other_settings_is_not_overwritten(tmp_path):
    from condconv_det.twins import twin_runs

    run = twin_runs(CONFIG, [], [0], str(tmp_path))["CondConv"][0]
    run.write_record()
    assert not run.is_finished()  # recorded, not evaluated yet
    _metrics_file = os.path.join(run.output_dir, "twin_run.json")
    with open(_metrics_file) as f:
        record = json.load(f)
    record["opts"] = ["SOLVER.MAX_ITER", "5"]
    with open(_metrics_file, "w") as f:
        json.dump(record, f)
    with pytest.raises(FileExistsError, match="trained with other settings"):
        run.is_finished()


def test_finished_runs_survive_comments_in_the_config_and_a_moved_output_folder(tmp_path):
    from condconv_det.twins import twin_runs

    config = tmp_path / "variant.yaml"
    config.write_text(f'_BASE_: "{os.path.abspath(CONFIG)}"\nSOLVER:\n  MAX_ITER: 10\n')

    def finished(output_dir, write=False):
        runs = twin_runs(str(config), [], [0], str(output_dir), from_static=10)
        for run in (r for twin in runs.values() for r in twin):
            if write:
                run.write_record()
                _metrics(run.output_dir, 30.0)
            assert run.is_finished()
        return runs

    runs = finished(tmp_path / "out", write=True)
    # The CondConv twin starts from its base's weights: recorded relative to its own folder.
    with open(os.path.join(runs["CondConv"][0].output_dir, "twin_run.json")) as f:
        recorded = json.load(f)["opts"]
    weights = recorded[recorded.index("MODEL.WEIGHTS") + 1]
    assert weights.startswith("..") and weights.endswith(os.path.join("seed0", "model_final.pth"))
    config.write_text(
        "# the same settings, commented and laid out otherwise\n"
        f"SOLVER: {{MAX_ITER: 10}}  # ten\n_BASE_: '{os.path.abspath(CONFIG)}'\n"
    )
    os.rename(tmp_path / "out", tmp_path / "moved")
    finished(tmp_path / "moved")
    config.write_text(f'_BASE_: "{os.path.abspath(CONFIG)}"\nSOLVER:\n  MAX_ITER: 11\n')
    with pytest.raises(FileExistsError, match="trained with other settings"):
        finished(tmp_path / "moved")


def test_a_condconv_only_setting_changed_in_the_config_retires_only_the_condconv_runs(tmp_path):
    from condconv_det.twins import twin_runs

    config = tmp_path / "variant.yaml"
    base = f'_BASE_: "{os.path.abspath(CONFIG)}"\n'
    config.write_text(base + "MODEL:\n  CONDCONV:\n    EXPERT_DROPOUT: 0.1\n")

    def runs():
        return twin_runs(str(config), [], [0], str(tmp_path / "out"), from_static=10)

    for run in (r for twin in runs().values() for r in twin):
        run.write_record()
        _metrics(run.output_dir, 30.0)
    config.write_text(
        base + "MODEL:\n  CONDCONV:\n    EXPERT_DROPOUT: 0.2\nSOLVER:\n  ROUTER_LR_FACTOR: 2.0\n"
    )
    changed = runs()
    assert changed["base"][0].is_finished() and changed["static"][0].is_finished()
    with pytest.raises(FileExistsError, match="trained with other settings"):
        changed["CondConv"][0].is_finished()
    # A setting both twins read still retires the static runs.
    config.write_text(
        base + "MODEL:\n  CONDCONV:\n    EXPERT_DROPOUT: 0.2\nSOLVER:\n  BASE_LR: 0.01\n"
    )
    with pytest.raises(FileExistsError, match="trained with other settings"):
        runs()["static"][0].is_finished()


def test_skip_train_does_not_report_runs_trained_with_other_settings(tmp_path, capsys):
    from condconv_det.twins import twin_runs

    tool = load_tool("compare_twins")
    config = tmp_path / "variant.yaml"
    base = f'_BASE_: "{os.path.abspath(CONFIG)}"\n'
    config.write_text(base + "MODEL:\n  CONDCONV:\n    ROUTER_HIDDEN_RATIO: 0.25\n")
    out = str(tmp_path / "out")
    for run in (r for twin in twin_runs(str(config), [], [0], out).values() for r in twin):
        run.write_record()
        _metrics(run.output_dir, 30.0)
    argv = ["--config-file", str(config), "--output-dir", out, "--skip-train", "--from-static", "0"]
    assert tool.main(argv) == 0
    assert "| box AP | 30.0 | 30.0 | +0.0 |" in capsys.readouterr().out
    # The config changed after training: its CondConv runs are another model's.
    config.write_text(base + "MODEL:\n  CONDCONV:\n    ROUTER_HIDDEN_RATIO: 0.0\n")
    with pytest.raises(FileExistsError, match="condconv.*trained with other settings"):
        tool.main(argv)


def test_static_runs_recorded_with_every_setting_of_the_file_are_reused(tmp_path):
    from condconv_det.twins import twin_runs

    run = twin_runs(CONFIG, [], [0], str(tmp_path))["static"][0]
    _metrics(run.output_dir, 30.0)
    with open(os.path.join(run.output_dir, "twin_run.json"), "w") as f:
        json.dump(run._record(static_settings_only=False), f)
    assert run._record(static_settings_only=False) != run.record
    assert run.is_finished()


def test_runs_recorded_by_earlier_versions_are_reused(tmp_path):
    import hashlib

    from condconv_det.twins import twin_runs

    run = twin_runs(CONFIG, [], [0], str(tmp_path))["static"][0]
    with open(CONFIG, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    older = {"twin": "static", "config_file": os.path.basename(CONFIG), "config_sha256": sha}
    _metrics(run.output_dir, 30.0)
    for opts, finished in ((run.opts, True), (run.opts[:-1] + ["1"], False)):
        with open(os.path.join(run.output_dir, "twin_run.json"), "w") as f:
            json.dump({**older, "opts": opts}, f)
        if finished:
            assert run.is_finished()
        else:
            with pytest.raises(FileExistsError, match="trained with other settings"):
                run.is_finished()


def test_from_static_trains_one_static_base_per_seed_and_starts_both_twins_from_it(
    tmp_path, capsys, monkeypatch
):
    tool = load_tool("compare_twins")
    trained = []

    def fake_training(config_file, output_dir, opts, quiet, *_):
        trained.append((output_dir, list(opts)))
        if "base" not in os.path.relpath(output_dir, tmp_path):
            _metrics(output_dir, 30.0 if "condconv" in output_dir else 27.5)
        return 1.0

    monkeypatch.setattr(tool, "run_training", fake_training)
    argv = [
        "--config-file",
        CONFIG,
        "--output-dir",
        str(tmp_path),
        "--seeds",
        "2",
        "--from-static",
        "40",
        "--jobs",
        "1",
    ]
    assert tool.main(argv + ["SOLVER.MAX_ITER", "60"]) == 0
    out = capsys.readouterr().out
    assert "both twins from the static model of 40 iterations" in out
    assert "| box AP | 30.0 ± 0.0 | 27.5 ± 0.0 | +2.5 ± 0.0 |" in out
    folders = [os.path.relpath(d, tmp_path).split(os.sep)[0] for d, _ in trained]
    assert (
        folders[0].startswith("base-") and folders[1] == folders[0]
    )  # the bases first, one per seed
    base_dirs = {seed: d for seed, (d, _) in enumerate(trained[:2])}
    for output_dir, opts in trained[2:]:
        pairs = dict(zip(opts[0::2], opts[1::2]))
        seed = int(pairs["SEED"])
        assert pairs["MODEL.WEIGHTS"] == os.path.join(
            os.path.abspath(base_dirs[seed]), "model_final.pth"
        )
        assert pairs["SOLVER.MAX_ITER"] == "60"
        assert (pairs.get("MODEL.CONDCONV.NUM_EXPERTS") == "0") == (
            "static" in os.path.relpath(output_dir, tmp_path)
        )
    base_opts = dict(zip(trained[0][1][0::2], trained[0][1][1::2]))
    assert base_opts["MODEL.CONDCONV.NUM_EXPERTS"] == "0" and base_opts["SOLVER.MAX_ITER"] == "40"
    # From-scratch twins live elsewhere: the two comparisons never share a run.
    from condconv_det.twins import twin_runs

    scratch = twin_runs(CONFIG, ["SOLVER.MAX_ITER", "60"], [0, 1], str(tmp_path))
    assert {r.output_dir for runs in scratch.values() for r in runs}.isdisjoint(
        d for d, _ in trained
    )


def test_the_static_model_both_twins_start_from_is_trained_as_the_config_says(capsys):
    tool = load_tool("compare_twins")
    # The main job's default config: the 0.5x upcycled recipe on the plain shapes dataset, both
    # twins trained 2400 iterations from the static model trained 1600.
    main_job = tool.parse_args([])
    assert main_job.config_file.endswith(os.path.join("shapes", "ssd_condconv_MNv1.yaml"))
    assert main_job.from_static == 1600
    from condconv_det.config import load_config

    assert load_config(main_job.config_file).SOLVER.MAX_ITER == 2400
    args = tool.parse_args(["--config-file", CONFIG, "MODEL.CONDCONV.UPCYCLE_FROM_ITERS", "70"])
    assert args.from_static == 70  # ... after the overrides
    assert tool.parse_args(["--config-file", CONFIG, "--from-static", "0"]).from_static == 0
    # Where the key is None, the static model trains as long as each twin.
    unset = ["MODEL.CONDCONV.UPCYCLE_FROM_ITERS", "None"]
    args = tool.parse_args(["--config-file", CONFIG, *unset, "SOLVER.MAX_ITER", "90"])
    assert args.from_static == 90
    # A bad value fails naming the key.
    with pytest.raises(SystemExit):
        tool.parse_args(["--config-file", CONFIG, "MODEL.CONDCONV.UPCYCLE_FROM_ITERS", "-5"])
    assert "MODEL.CONDCONV.UPCYCLE_FROM_ITERS must be None" in capsys.readouterr().err


def test_a_bad_override_fails_before_any_training(tmp_path, monkeypatch, capsys):
    tool = load_tool("compare_twins")
    monkeypatch.setattr(tool, "run_training", lambda *a: pytest.fail("trained"))
    with pytest.raises(SystemExit):
        tool.main(
            ["--config-file", CONFIG, "--output-dir", str(tmp_path), "SOLVER.NO_SUCH_KEY", "1"]
        )
    assert "SOLVER.NO_SUCH_KEY" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("where", ["override", "config file", "config file, override 0"])
def test_the_static_twin_has_no_experts_in_ssds_extra_layers_and_predictors(tmp_path, where):
    from detectron2.modeling import build_model

    from condconv_det.config import load_config
    from condconv_det.layers import CondConv2d
    from condconv_det.twins import twin_runs

    config, opts = CONFIG, ["MODEL.SSD.EXTRA_NUM_EXPERTS", "2", "MODEL.SSD.HEAD_NUM_EXPERTS", "2"]
    if where != "override":
        config = tmp_path / "variant.yaml"
        config.write_text(
            f'_BASE_: "{os.path.abspath(CONFIG)}"\n'
            "MODEL:\n  SSD:\n    EXTRA_NUM_EXPERTS: 2\n    HEAD_NUM_EXPERTS: 2\n"
        )
        config = str(config)
        opts = [] if where == "config file" else ["MODEL.SSD.EXTRA_NUM_EXPERTS", "0"]
    plain = twin_runs(CONFIG, [], [0], str(tmp_path / "out"), from_static=10)
    runs = twin_runs(config, opts, [0], str(tmp_path / "out"), from_static=10)

    def condconv_layers(run):
        cfg = load_config(run.config_file, run.opts + ["MODEL.DEVICE", "cpu"])
        names = [n for n, m in build_model(cfg).named_modules() if isinstance(m, CondConv2d)]
        return {part for n in names for part in ("head.", "backbone.p6.") if part in n}

    expected = {"head."} if opts[-1:] == ["0"] else {"head.", "backbone.p6."}
    assert condconv_layers(runs["CondConv"][0]) == expected
    for twin in ("base", "static"):
        run = runs[twin][0]
        assert condconv_layers(run) == set()
        # Named as the static run of the config without SSD experts: with the same overrides
        # (here none) it is that run, shared by both comparisons; from another config file its
        # record differs (the file's name), so one output folder does not mix the two.
        assert run.output_dir == plain[twin][0].output_dir
        assert (run.record == plain[twin][0].record) == (where == "override")
    assert runs["CondConv"][0].record != plain["CondConv"][0].record


def test_twin_opts_change_both_twins_and_leave_the_static_base_shared(
    tmp_path, monkeypatch, capsys
):
    tool = load_tool("compare_twins")
    trained = []

    def fake_training(config_file, output_dir, opts, quiet, *_):
        trained.append((os.path.relpath(output_dir, tmp_path), dict(zip(opts[0::2], opts[1::2]))))
        _metrics(output_dir, 30.0 if "condconv" in output_dir else 27.5)  # bases: finished too
        return 1.0

    monkeypatch.setattr(tool, "run_training", fake_training)
    argv = ["--config-file", CONFIG, "--output-dir", str(tmp_path), "--from-static", "40"]
    assert tool.main(argv + ["SOLVER.MAX_ITER", "60"]) == 0
    plain = dict(trained)
    trained.clear()
    twin_opt = ["--twin-opt", "SOLVER.WARMUP_ITERS", "20", "--twin-opt", "SOLVER.MAX_ITER", "80"]
    assert tool.main(argv + twin_opt + ["SOLVER.MAX_ITER", "60"]) == 0
    out = capsys.readouterr().out
    assert "from the static model of 40 iterations and then with SOLVER.WARMUP_ITERS 20" in out
    # The base is the finished one: not trained again. Both twins are new runs with the
    # twin-only overrides after the others (the last value of a key wins).
    assert sorted(folder.split(os.sep)[0][:6] for folder, _ in trained) == ["condco", "static"]
    assert not set(dict(trained)) & set(plain)
    for folder, opts in trained:
        assert opts["SOLVER.WARMUP_ITERS"] == "20" and opts["SOLVER.MAX_ITER"] == "80"
        base = [f for f in plain if f.startswith("base-")][0]
        assert opts["MODEL.WEIGHTS"] == os.path.join(str(tmp_path), base, "model_final.pth")
    # Without --from-static the default length is the overrides' schedule, not --twin-opt's.
    unset = ["MODEL.CONDCONV.UPCYCLE_FROM_ITERS", "None"]
    args = tool.parse_args(["--config-file", CONFIG] + twin_opt + unset)
    assert args.from_static == 2400 and args.twin_opt[1] == ["SOLVER.MAX_ITER", "80"]
    monkeypatch.setattr(tool, "run_training", lambda *a: pytest.fail("trained"))
    with pytest.raises(SystemExit):
        tool.main(argv + ["--twin-opt", "SOLVER.NO_SUCH_KEY", "1"])
    assert "SOLVER.NO_SUCH_KEY" in capsys.readouterr().err


def test_two_jobs_train_the_twins_of_a_seed_side_by_side_on_shared_cores(
    tmp_path, monkeypatch, capsys
):
    import threading

    tool = load_tool("compare_twins")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(tool, "cores", lambda: 4)
    lock, running, events = threading.Lock(), set(), []
    both = threading.Barrier(2, timeout=10)

    def fake_training(config_file, output_dir, opts, quiet, label, env):
        run = os.path.relpath(output_dir, tmp_path)
        with lock:
            running.add(run)
            events.append((run, sorted(running), label, env["OMP_NUM_THREADS"]))
        if not run.startswith("base"):
            both.wait()  # the two twins of the seed are in training at the same time
        if not run.startswith("base"):
            _metrics(output_dir, 30.0 if "condconv" in output_dir else 27.5)
        with lock:
            running.discard(run)
        return 2.0

    monkeypatch.setattr(tool, "run_training", fake_training)
    argv = ["--config-file", CONFIG, "--output-dir", str(tmp_path), "--from-static", "40"]
    assert tool.main(argv) == 0  # --jobs 2: the default on the CPU
    out = capsys.readouterr().out
    assert "Training 2 runs at once, 2 thread(s) each." in out
    assert "(Training times of runs trained 2 at once.)" in out
    base, condconv, static = events[0], *sorted(events[1:])
    assert [run.split("-")[0] for run, *_ in (base, condconv, static)] == [
        "base",
        "condconv",
        "static",
    ]
    assert base[1] == [base[0]]  # the twins wait for the static model they start from
    assert base[2] == "[base 0] " and condconv[2] == "[CondConv 0] " and static[2] == "[static 0] "
    assert {e[3] for e in events} == {"2"}  # 4 cores over 2 jobs
    # A thread count the user set is theirs.
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert tool.training_env(2) is None and tool.training_env(1) is None
    # On the CPU two at once is the default; on CUDA (where there is one) or on one core, one.
    from condconv_det.config import load_config

    assert tool.default_jobs(load_config(CONFIG, ["MODEL.DEVICE", "cpu"])) == 2
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tool.default_jobs(load_config(CONFIG, ["MODEL.DEVICE", "cuda"])) == 1
    monkeypatch.setattr(tool, "cores", lambda: 1)
    assert tool.default_jobs(load_config(CONFIG, ["MODEL.DEVICE", "cpu"])) == 1
    with pytest.raises(SystemExit):
        tool.parse_args(["--config-file", CONFIG, "--jobs", "0"])
    assert "--jobs must be >= 1, got 0" in capsys.readouterr().err


def test_a_failed_training_stops_the_others_and_starts_nothing_more(tmp_path, monkeypatch):
    tool = load_tool("compare_twins")
    started, stopped = [], []

    def fake_training(config_file, output_dir, opts, quiet, label, env):
        # (kind, seed), e.g. ("base", "seed1")
        folder, seed = os.path.relpath(output_dir, tmp_path).split(os.sep)
        started.append((folder.split("-")[0], seed))
        if "base" in output_dir and "seed1" in output_dir:
            raise RuntimeError("training failed (exit 1): the log's tail")
        _metrics(output_dir, 30.0)
        return 1.0

    monkeypatch.setattr(tool, "run_training", fake_training)
    monkeypatch.setattr(tool, "stop_trainings", lambda: stopped.append(True))
    argv = ["--config-file", CONFIG, "--output-dir", str(tmp_path), "--from-static", "40"]
    with pytest.raises(RuntimeError, match="the log's tail"):
        tool.main(argv + ["--seeds", "2", "--jobs", "2"])
    assert stopped == [True]
    # Both bases started at once; at most the twins of seed 0 after them, none of seed 1. (The
    # order in which the worker threads reach their first line is the scheduler's business.)
    assert {seed for kind, seed in started if kind == "base"} == {"seed0", "seed1"}
    assert all(seed == "seed0" for kind, seed in started if kind != "base")
    assert len(started) <= 4


def test_run_training_shares_the_cores_and_labels_the_lines(tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    tool = load_tool("compare_twins")
    real_popen = subprocess.Popen

    def popen(cmd, **kwargs):  # train_net.py replaced by a script that prints its threads
        script = "import os; print('threads', os.environ.get('OMP_NUM_THREADS'))"
        return real_popen([sys.executable, "-c", script], **kwargs)

    monkeypatch.setattr(tool.subprocess, "Popen", popen)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    tool.run_training(CONFIG, str(tmp_path / "run"), [], False, "[static 0] ", env)
    assert capsys.readouterr().out == "[static 0] threads 1\n"
    assert tool._LIVE == []  # done: nothing left to stop

    def failing(cmd, **kwargs):
        return real_popen([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], **kwargs)

    monkeypatch.setattr(tool.subprocess, "Popen", failing)
    with pytest.raises(RuntimeError, match=r"training failed \(exit 3\)(.|\n)*boom"):
        tool.run_training(CONFIG, str(tmp_path / "run"), [], True)


def test_run_in_order_keeps_dependencies_and_the_job_limit():
    import threading
    import time

    from condconv_det.twins import TwinRun, run_in_order

    def run(name):
        return TwinRun(name, CONFIG, [], 0, name)

    b0, b1, c0, s0, c1 = (run(n) for n in ("b0", "b1", "c0", "s0", "c1"))
    order = [(b0, None), (b1, None), (c0, b0), (s0, b0), (c1, b1)]
    lock, running, peak, log = threading.Lock(), [0], [0], []

    def train(r):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            log.append(("start", r.twin))
        time.sleep(0.05)
        with lock:
            running[0] -= 1
            log.append(("end", r.twin))
        return len(r.twin)

    assert run_in_order(order, train, jobs=2) == {"b0": 2, "b1": 2, "c0": 2, "s0": 2, "c1": 2}
    assert peak[0] == 2
    for twin, base in (("c0", "b0"), ("s0", "b0"), ("c1", "b1")):
        assert log.index(("end", base)) < log.index(("start", twin))
    log.clear()
    run_in_order(order, train, jobs=1)
    assert [t for what, t in log if what == "start"] == ["b0", "b1", "c0", "s0", "c1"]
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        run_in_order(order, train, jobs=0)
    with pytest.raises(ValueError, match="runs that start from runs not in the order: c0"):
        run_in_order([(c0, b0)], train, jobs=2)
