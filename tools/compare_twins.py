#!/usr/bin/env python
"""The main job: train a CondConv detector and its static twin, then compare them side by side.

    python tools/compare_twins.py                                   # the main job, one seed
    python tools/compare_twins.py --seeds 3                         # mean and spread over 3 seeds
    python tools/compare_twins.py --config-file configs/shapes/ssd_condconv_MNv1.yaml \\
        MODEL.CONDCONV.STATIC_KERNEL True                           # a variant (ablation row)
    python tools/compare_twins.py --skip-train                      # re-read finished runs
    python tools/compare_twins.py --from-static 0                   # both twins from scratch
    python tools/compare_twins.py --twin-opt SOLVER.WARMUP_ITERS 200  # both twins, not the base

By default both twins start from a static model trained ``MODEL.CONDCONV.UPCYCLE_FROM_ITERS``
iterations (where that is None, as long as the config's schedule, ``SOLVER.MAX_ITER``, with the
overrides; ``--from-static`` sets another length): the static twin continues it and the
CondConv twin is upcycled from it; both then train ``SOLVER.MAX_ITER`` iterations.
``--twin-opt KEY VALUE`` changes both twins but not that static model (a longer warm-up or
schedule after it), which is reused.
The main job's config is ``configs/shapes/ssd_condconv_MNv1.yaml``.

The static twin is the same config with ``MODEL.CONDCONV.NUM_EXPERTS 0`` (and, for SSD, 0 in
``MODEL.SSD.EXTRA_NUM_EXPERTS`` and ``HEAD_NUM_EXPERTS``). Each model trains in its own
``tools/train_net.py`` process (its log, with losses and ETA, is shown as it runs and kept in
``<output-dir>/<twin>/seed<k>/log.txt``). On the CPU the two twins of a seed train side by side
(``--jobs 2``, the default there; each with half the cores, ``OMP_NUM_THREADS``, unless that is
set): a model as small as the main job's trains no faster with two threads than with one on 2
cores, and its twins took 12 minutes side by side against 21 one after the other. The final
COCO evaluations are then printed side by side, as the mean and spread over the seeds, with the
seed-by-seed difference, parameters and multiply-adds. Extra ``KEY VALUE`` pairs apply to both
runs; those that only a CondConv model reads (``MODEL.CONDCONV.*``, SSD's expert counts, the
routers' solver settings) are left out of the static twin's, so the static runs are shared by
every variant and trained once. Finished runs are reused. A --config-file inside a run's folder
is refused: training writes its own config.yaml there.
"""

import _tool_env  # noqa: F401  (first: process settings made before torch is imported)

import argparse
import os
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "shapes", "ssd_condconv_MNv1.yaml")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="the CondConv config")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "output", "compare_twins"))
    parser.add_argument("--seeds", type=int, default=1, help="train seeds 0 .. N-1 of each twin")
    parser.add_argument("--skip-train", action="store_true", help="only summarize finished runs")
    parser.add_argument("--quiet", action="store_true", help="do not echo the training logs")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="trainings at once, each with the cores over JOBS as threads (OMP_NUM_THREADS, "
        "unless set); the twins of a seed train side by side (default: 2 on the CPU with 2 or "
        "more cores, 1 on CUDA)",
    )
    parser.add_argument(
        "--from-static",
        type=int,
        default=None,
        metavar="ITERS",
        help="start both twins from the static model trained ITERS iterations (same seed): the "
        "static twin continues it, the CondConv twin is upcycled from it (default: the config's "
        "MODEL.CONDCONV.UPCYCLE_FROM_ITERS, or where that is None its SOLVER.MAX_ITER, after "
        "the overrides; 0: both from scratch)",
    )
    parser.add_argument(
        "--twin-opt",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="an override for both twins that the static model they start from does not get, "
        "e.g. a longer warm-up or schedule of the continued training (repeatable; before the "
        "KEY VALUE overrides)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for both runs")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.config_file):
        parser.error(f"config file {args.config_file!r} does not exist")
    if len(args.opts) % 2:
        parser.error(f"overrides come in KEY VALUE pairs, got {args.opts}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    from condconv_det.config import load_config

    args.twin_opts = [x for pair in args.twin_opt for x in pair]
    try:  # a bad override fails here, before anything trains
        if args.twin_opts:
            load_config(args.config_file, args.opts + args.twin_opts)
        if args.from_static is None:
            args.from_static = default_from_static(load_config(args.config_file, args.opts))
    except ValueError as e:
        parser.error(f"{args.config_file}: {e}")
    if args.from_static < 0:
        parser.error(f"--from-static must be >= 0 (iterations), got {args.from_static}")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    return args


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_jobs(cfg) -> int:
    """Two trainings at once on the CPU (with 2 or more cores), one on CUDA: measured on 2
    cores, a training of the main job takes 0.20 s an iteration with one thread or two, and its
    twins side by side with one thread each 0.25 (static) and 0.30 s (CondConv)."""
    from condconv_det.config.loader import run_on_cpu_without_cuda

    run_on_cpu_without_cuda(cfg)
    return 2 if cfg.MODEL.DEVICE == "cpu" and cores() >= 2 else 1


def training_env(jobs: int) -> Optional[Dict[str, str]]:
    """The environment of each training: with several at once, the cores shared among them
    (``OMP_NUM_THREADS``), unless the user set it."""
    if jobs == 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return dict(os.environ, OMP_NUM_THREADS=str(max(1, cores() // jobs)))


def default_from_static(cfg) -> int:
    """The static model's length the config sets: MODEL.CONDCONV.UPCYCLE_FROM_ITERS, or as long
    as each twin trains (SOLVER.MAX_ITER, before any --twin-opt) where that is None."""
    from condconv_det.config.checks import check_condconv_config

    check_condconv_config(cfg)  # a bad value fails naming its key, before anything trains
    iters = cfg.MODEL.CONDCONV.UPCYCLE_FROM_ITERS
    return int(cfg.SOLVER.MAX_ITER if iters is None else iters)


_PRINT = threading.Lock()
_LIVE: List[subprocess.Popen] = []  # the trainings going on, stopped when one of them fails


def run_training(
    config_file: str,
    output_dir: str,
    opts: List[str],
    quiet: bool,
    label: str = "",
    env: Optional[Dict[str, str]] = None,
) -> float:
    """Runs tools/train_net.py; returns its wall time. Fails with the log's tail on error. Each
    line it prints is echoed (unless ``quiet``) after ``label``, which tells apart trainings
    running at once."""
    os.makedirs(output_dir, exist_ok=True)
    # --resume: a run that was interrupted continues from its last checkpoint.
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "train_net.py"),
        "--config-file",
        config_file,
        "--resume",
    ]
    cmd += [*opts, "OUTPUT_DIR", output_dir]
    start = time.perf_counter()
    tail: List[str] = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as proc:
        _LIVE.append(proc)
        try:
            for line in proc.stdout:
                tail = (tail + [line])[-40:]
                if not quiet:
                    with _PRINT:
                        sys.stdout.write(label + line)
                        sys.stdout.flush()
        finally:
            _LIVE.remove(proc)
    if proc.returncode != 0:
        raise RuntimeError(
            f"training failed (exit {proc.returncode}): {' '.join(cmd)}\n" + "".join(tail)
        )
    return time.perf_counter() - start


def stop_trainings() -> None:
    """Stops the trainings still going (each resumes from its last checkpoint when run
    again)."""
    for proc in list(_LIVE):
        proc.terminate()


def model_figures(config_file: str, opts: List[str]) -> Dict[str, object]:
    """Parameters (all / in experts) and multiply-adds at the test input size."""
    from condconv_det.analysis import analyze_detector, count_parameters, eval_image_size
    from condconv_det.config import load_config

    cfg = load_config(config_file, opts)
    model, analysis = analyze_detector(cfg)
    params = count_parameters(model)
    return {
        "params": params["total"] / 1e6,
        "experts": params["experts"] / 1e6,
        "madds": analysis.total() / 1e6,
        "size": "x".join(str(s) for s in eval_image_size(cfg)),
    }


def main(argv=None) -> int:
    from condconv_det.file_io import check_outputs_spare_inputs
    from condconv_det.twins import (
        final_results,
        format_table,
        run_in_order,
        training_order,
        twin_runs,
    )

    args = parse_args(argv)
    runs = twin_runs(
        args.config_file,
        args.opts,
        range(args.seeds),
        args.output_dir,
        args.from_static,
        args.twin_opts,
    )
    if not args.skip_train:
        # Training writes its config.yaml, checkpoints and logs into each run's folder.
        folders = [run.output_dir for twin_runs_ in runs.values() for run in twin_runs_]
        try:
            check_outputs_spare_inputs(
                [("--config-file", args.config_file)], output_folders=folders, option="--output-dir"
            )
        except ValueError as e:
            sys.exit(f"error: {e}")
    if args.jobs is None:
        from condconv_det.config import load_config

        args.jobs = default_jobs(load_config(args.config_file, args.opts))
    env = training_env(args.jobs)

    def train(run) -> float:
        if run.is_finished():
            with _PRINT:
                print(
                    f"\n=== reusing the finished {run.twin} run, seed {run.seed}: {run.output_dir}"
                )
            return float("nan")
        what = "static model both twins start from" if run.twin == "base" else f"{run.twin} model"
        with _PRINT:
            print(f"\n=== training the {what}, seed {run.seed} -> {run.output_dir}", flush=True)
        run.write_record()
        label = f"[{run.twin} {run.seed}] " if args.jobs > 1 else ""
        return run_training(args.config_file, run.output_dir, run.opts, args.quiet, label, env)

    times: Dict[str, float] = {}
    if not args.skip_train:
        if args.jobs > 1:
            threads = env["OMP_NUM_THREADS"] if env else os.environ["OMP_NUM_THREADS"]
            print(f"Training {args.jobs} runs at once, {threads} thread(s) each.", flush=True)
        began = time.perf_counter()
        times = run_in_order(training_order(runs), train, args.jobs, stop_trainings)
        trained = sum(1 for t in times.values() if t == t)
        if trained:
            minutes = (time.perf_counter() - began) / 60
            print(f"\n{trained} run(s) trained in {minutes:.1f} min.")
    rows: Dict[str, List[Dict[str, float]]] = {}
    figures: Dict[str, Dict[str, object]] = {}
    for twin, twin_runs_ in runs.items():
        if twin == "base":
            continue
        for run in twin_runs_:
            if args.skip_train:
                # Training checked the record above. A run trained with other settings (a
                # config changed since) is not reported as this config's; a run without a
                # record (made by hand) is read as it is.
                run.check_record()
            rows.setdefault(twin, []).append(final_results(run.output_dir))
        figures[twin] = model_figures(args.config_file, twin_runs_[0].opts)
        trained = [times[r.output_dir] for r in twin_runs_ if times.get(r.output_dir, 0) > 0]
        if trained:
            figures[twin]["train_s"] = sum(trained) / len(trained)
    seeds = f", {args.seeds} seeds (mean ± standard deviation)" if args.seeds > 1 else ""
    start = (
        f", both twins from the static model of {args.from_static} iterations"
        if args.from_static
        else ""
    )
    if args.twin_opts and args.from_static:
        start += f" and then with {' '.join(args.twin_opts)}"
    print(
        f"\nCOCO box AP on the test set of {os.path.relpath(args.config_file, ROOT)}{seeds}{start}:"
    )
    print(format_table(rows, figures))
    if args.jobs > 1 and any("train_s" in f for f in figures.values()):
        print(f"(Training times of runs trained {args.jobs} at once.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
