#!/usr/bin/env python
"""The main job: train a CondConv detector and its static twin, then compare them side by side.

    python tools/compare_twins.py                                   # the bundled shapes dataset
    python tools/compare_twins.py --config-file configs/shapes/retinanet_condconv_MNv2_FPN.yaml
    python tools/compare_twins.py --skip-train                      # re-read finished runs

The static twin is the same config with ``MODEL.CONDCONV.NUM_EXPERTS 0``. Each model trains in
its own ``tools/train_net.py`` process (its log, with losses and ETA, is shown as it runs and kept
in ``<output-dir>/<model>/log.txt``); the final COCO evaluation of each run is then printed
next to the other with parameters, multiply-adds and timings. Extra ``KEY VALUE`` pairs apply to
both runs.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "shapes", "ssd_condconv_MNv1.yaml")
METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="the CondConv config")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "output", "compare_twins"))
    parser.add_argument("--skip-train", action="store_true", help="only summarize finished runs")
    parser.add_argument("--quiet", action="store_true", help="do not echo the training logs")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for both runs")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.config_file):
        parser.error(f"config file {args.config_file!r} does not exist")
    if len(args.opts) % 2:
        parser.error(f"overrides come in KEY VALUE pairs, got {args.opts}")
    return args


def run_training(config_file: str, output_dir: str, opts: List[str], quiet: bool) -> float:
    """Runs tools/train_net.py; returns its wall time. Fails with the log's tail on error."""
    os.makedirs(output_dir, exist_ok=True)
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config_file]
    cmd += [*opts, "OUTPUT_DIR", output_dir]
    start = time.perf_counter()
    tail: List[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            if not quiet:
                sys.stdout.write(line)
                sys.stdout.flush()
    if proc.returncode != 0:
        raise RuntimeError(
            f"training failed (exit {proc.returncode}): {' '.join(cmd)}\n" + "".join(tail)
        )
    return time.perf_counter() - start


def final_results(output_dir: str) -> Dict[str, float]:
    """The last COCO evaluation of a run, from its ``metrics.json`` (``bbox/AP`` ... keys)."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: train first (without --skip-train)")
    last: Optional[Dict[str, float]] = None
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "bbox/AP" in record:
                last = record
    if last is None:
        raise RuntimeError(f"{path} holds no COCO evaluation: did the run finish?")
    return last


def model_figures(config_file: str, opts: List[str]) -> Dict[str, float]:
    """Parameters (all / in experts) and multiply-adds at the test input size."""
    from condconv_det.analysis import analyze_detector, count_parameters, eval_image_size
    from condconv_det.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    model, analysis = analyze_detector(cfg)
    params = count_parameters(model)
    return {
        "params": params["total"] / 1e6,
        "experts": params["experts"] / 1e6,
        "madds": analysis.total() / 1e6,
        "size": "x".join(str(s) for s in eval_image_size(cfg)),
    }


def print_table(rows: Dict[str, Dict[str, float]]) -> None:
    names = list(rows)
    print("\n| | " + " | ".join(names) + " | difference |")
    print("|---" * (len(names) + 2) + "|")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not math.isnan(v)

    def line(label, key, fmt, diff=True):
        values = [rows[n].get(key) for n in names]
        # COCO reports NaN for a size class without objects (e.g. APl here): shown as "-".
        cells = [fmt.format(v) if number(v) else ("-" if v is None or isinstance(v, float) else str(v)) for v in values]
        delta = ""
        if diff and all(number(v) for v in values) and len(values) == 2:
            delta = fmt.format(values[0] - values[1])
            delta = delta if delta.startswith("-") else "+" + delta
        print(f"| {label} | " + " | ".join(cells) + f" | {delta} |")

    for metric in METRICS:
        line(f"box {metric}", f"bbox/{metric}", "{:.1f}")
    for key in sorted(k for k in rows[names[0]] if k.startswith("bbox/AP-")):
        line(f"  AP {key[len('bbox/AP-'):]}", key, "{:.1f}")
    line("parameters (M)", "params", "{:.2f}")
    line("  in CondConv experts (M)", "experts", "{:.2f}")
    line("multiply-adds (M)", "madds", "{:.0f}")
    line("input size", "size", "{}", diff=False)
    line("training time (s)", "train_s", "{:.0f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    twins = {
        "CondConv": (args.config_file, list(args.opts)),
        "static": (args.config_file, list(args.opts) + ["MODEL.CONDCONV.NUM_EXPERTS", "0"]),
    }
    rows: Dict[str, Dict[str, float]] = {}
    for name, (config, opts) in twins.items():
        out = os.path.join(args.output_dir, name.lower())
        row: Dict[str, float] = {}
        if not args.skip_train:
            print(f"\n=== training the {name} model ({config}) -> {out}", flush=True)
            row["train_s"] = run_training(config, out, opts, args.quiet)
        row.update(final_results(out))
        row.update(model_figures(config, opts))
        rows[name] = row
    print(f"\nCOCO box AP on the test set of {os.path.relpath(args.config_file, ROOT)}:")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
