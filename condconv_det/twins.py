"""CondConv against its static twin: the runs of both, over seeds, and their comparison.

A twin pair is one config trained twice, with ``MODEL.CONDCONV.NUM_EXPERTS`` (and SSD's
``EXTRA_NUM_EXPERTS`` / ``HEAD_NUM_EXPERTS``) as the config says (CondConv) and 0 (static), under
the same overrides and seed. The CondConv-only settings
(:data:`CONDCONV_ONLY_PREFIXES`) do nothing in a static model, so the static twin is trained
without them: the static runs of several CondConv variants (an ablation) are the same runs, and
are trained once.

Each run lives in ``<output_dir>/<twin>[-<key>]/seed<k>/`` with a ``twin_run.json`` that records
what it was trained with; ``<key>`` is a short hash of the overrides (none without overrides). A
finished run with the same record is reused rather than trained again. The record holds what the
config file sets (its ``_BASE_`` files' included), not its text, so a comment or a reformatting
does not retire finished runs, and a ``MODEL.WEIGHTS`` path relative to the run's folder, so the
whole output folder can move.
"""

import hashlib
import json
import math
import os
import statistics
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from condconv_det.file_io import atomic_write

__all__ = [
    "CONDCONV_ONLY_PREFIXES",
    "METRICS",
    "TwinRun",
    "final_results",
    "format_table",
    "run_in_order",
    "summarize",
    "training_order",
    "twin_runs",
]

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]

# The experts of SSD's extra layers and predictors, set outside MODEL.CONDCONV: the static twin
# is trained with 0 where the CondConv twin has them.
SSD_EXPERT_KEYS = ("MODEL.SSD.EXTRA_NUM_EXPERTS", "MODEL.SSD.HEAD_NUM_EXPERTS")

# Overrides that only a CondConv model reads; the static twin is trained without them.
CONDCONV_ONLY_PREFIXES = (
    "MODEL.CONDCONV.",
    *SSD_EXPERT_KEYS,
    "SOLVER.ROUTER_LR_FACTOR",
    "SOLVER.WEIGHT_DECAY_ROUTER",
)

_RECORD = "twin_run.json"


class TwinRun:
    """One training run of one twin: where it goes and what it is trained with."""

    def __init__(
        self, twin: str, config_file: str, opts: Sequence[str], seed: int, output_dir: str
    ):
        self.twin, self.config_file, self.seed = twin, config_file, seed
        self.opts = [str(o) for o in opts] + ["SEED", str(seed)]
        self.output_dir = output_dir

    @property
    def record(self) -> Dict:
        return self._record(static_settings_only=self.twin != "CondConv")

    def _record(self, static_settings_only: bool) -> Dict:
        """What the run is trained with. A static run's record leaves out what the config file
        sets under :data:`CONDCONV_ONLY_PREFIXES`, which a static model does not read, so that
        changing a CondConv-only setting in the file does not retire finished static runs."""
        from condconv_det.config import config_file_values

        settings = config_file_values(self.config_file)
        if static_settings_only:
            settings = _without_condconv_only(settings)
        values = json.dumps(settings, sort_keys=True, default=str)
        opts = _without_ssd_experts_off(self.opts) if static_settings_only else list(self.opts)
        for i in range(0, len(opts) - 1, 2):
            if opts[i] == "MODEL.WEIGHTS" and os.path.isabs(opts[i + 1]):
                opts[i + 1] = os.path.relpath(opts[i + 1], os.path.abspath(self.output_dir))
        return {
            "twin": self.twin,
            "config_file": os.path.basename(self.config_file),
            "config_values_sha256": hashlib.sha256(values.encode()).hexdigest(),
            "opts": opts,
        }

    def _older_record(self) -> Dict:
        """The record as earlier versions wrote it: the config file's bytes, absolute paths."""
        with open(self.config_file, "rb") as f:
            config_sha = hashlib.sha256(f.read()).hexdigest()
        return {
            "twin": self.twin,
            "config_file": os.path.basename(self.config_file),
            "config_sha256": config_sha,
            "opts": self.opts,
        }

    def check_record(self) -> bool:
        """Whether the folder holds this run's record; raises if it holds another run's."""
        path = os.path.join(self.output_dir, _RECORD)
        if not os.path.isfile(path):
            return False
        with open(path) as f:
            recorded = json.load(f)
        # Earlier versions recorded every setting of the file, then the file's bytes.
        accepted = (self.record, self._record(static_settings_only=False), self._older_record())
        if recorded not in accepted:
            raise FileExistsError(
                f"{self.output_dir} holds a {self.twin} run trained with other settings "
                f"(see its {_RECORD}); remove it or pass another --output-dir."
            )
        return True

    def is_finished(self) -> bool:
        """Whether the run is there, with this record and a final evaluation."""
        if not self.check_record():
            return False
        try:
            final_results(self.output_dir)
        except (FileNotFoundError, RuntimeError):
            return False
        return True

    def write_record(self) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        record = self.record
        atomic_write(
            os.path.join(self.output_dir, _RECORD), lambda f: json.dump(record, f, indent=2), "w"
        )


def _condconv_only(key: str) -> bool:
    """Whether a config key (a leaf, or a node such as ``MODEL.CONDCONV``) is CondConv-only."""
    return f"{key}.".startswith(CONDCONV_ONLY_PREFIXES)


def _without_condconv_only(values: Dict, prefix: str = "") -> Dict:
    """The nested config values without the keys under :data:`CONDCONV_ONLY_PREFIXES`."""
    kept = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if _condconv_only(name):
            continue
        kept[key] = _without_condconv_only(value, f"{name}.") if isinstance(value, dict) else value
    return kept


def _split_opts(opts: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(CondConv twin's overrides, static twin's overrides). The static twin's end with 0
    experts: ``MODEL.CONDCONV.NUM_EXPERTS``, then SSD's extra layers and predictors, whatever the
    config file or the overrides set there."""
    if len(opts) % 2:
        raise ValueError(f"overrides come in KEY VALUE pairs, got {list(opts)}")
    pairs = [(str(k), str(v)) for k, v in zip(opts[0::2], opts[1::2])]
    static = [x for k, v in pairs if not _condconv_only(k) for x in (k, v)]
    static += ["MODEL.CONDCONV.NUM_EXPERTS", "0"]
    static += [x for key in SSD_EXPERT_KEYS for x in (key, "0")]
    return [x for pair in pairs for x in pair], static


def _without_ssd_experts_off(opts: Sequence[str]) -> List[str]:
    """A static run's overrides without the pairs that set SSD's experts to 0, as its folder
    name and record hold them: earlier versions did not pass them, and a static model of a
    config without SSD experts is the same run with or without them. (Where the config file
    sets SSD experts, its values in the record differ from an earlier version's, which trained
    the static twin with them: such a run is not reused.)"""
    pairs = zip(opts[0::2], opts[1::2])
    return [x for k, v in pairs if not (k in SSD_EXPERT_KEYS and v == "0") for x in (k, v)]


def _key(opts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(opts)).encode()).hexdigest()[:8]


def twin_runs(
    config_file: str,
    opts: Sequence[str],
    seeds: Sequence[int],
    output_dir: str,
    from_static: int = 0,
    twin_opts: Sequence[str] = (),
) -> Dict[str, List[TwinRun]]:
    """The runs of both twins, by twin ("CondConv", "static"), one per seed.

    With ``from_static`` > 0, both twins start from a static model trained ``from_static``
    iterations with the same seed (the runs under the key "base", to be trained first): the
    static twin continues it, the CondConv twin is upcycled from it
    (:class:`~condconv_det.checkpoint.CondConvCheckpointer`), and both then train for the
    config's schedule: the same data, iterations and starting function for both.
    ``twin_opts`` are overrides for both twins that the static model they start from does not
    get (a longer warm-up or schedule of the continued training); they follow ``opts``, as if
    given there, but leave the base's folder as it is, so that finished bases are reused.
    """
    condconv_opts, static_opts = _split_opts(list(opts) + list(twin_opts))
    runs: Dict[str, List[TwinRun]] = {}
    bases: Dict[int, TwinRun] = {}
    if from_static > 0:
        base_opts = _split_opts(opts)[1] + ["SOLVER.MAX_ITER", str(from_static)]
        folder = f"base-{_key(_without_ssd_experts_off(base_opts))}"
        runs["base"] = [
            TwinRun(
                "base",
                config_file,
                base_opts,
                seed,
                os.path.join(output_dir, folder, f"seed{seed}"),
            )
            for seed in seeds
        ]
        bases = {run.seed: run for run in runs["base"]}
    for twin, twin_opts in (("CondConv", condconv_opts), ("static", static_opts)):
        base = twin.lower()
        # The static twin's folder is named by its overrides, not by the zeroed expert counts.
        extra = twin_opts if twin == "CondConv" else _without_ssd_experts_off(twin_opts)[:-2]
        if from_static > 0:
            extra = extra + ["from_static", str(from_static)]
        folder = base if not extra else f"{base}-{_key(extra)}"
        runs[twin] = []
        for seed in seeds:
            seed_opts = list(twin_opts)
            if from_static > 0:
                weights = os.path.join(os.path.abspath(bases[seed].output_dir), "model_final.pth")
                seed_opts += ["MODEL.WEIGHTS", weights]
            runs[twin].append(
                TwinRun(
                    twin,
                    config_file,
                    seed_opts,
                    seed,
                    os.path.join(output_dir, folder, f"seed{seed}"),
                )
            )
    return runs


def training_order(runs: Dict[str, List[TwinRun]]) -> List[Tuple[TwinRun, Optional[TwinRun]]]:
    """The runs of :func:`twin_runs` in the order to train them, each with the run it starts
    from (the static model of its seed, or None): the static models first, then both twins of
    each seed one after the other, so that with one seed two trainings at once train its twins
    side by side, under the same load (with several, :func:`run_in_order` starts each run as
    soon as a slot is free and its static model is trained)."""
    bases = {run.seed: run for run in runs.get("base", [])}
    order: List[Tuple[TwinRun, Optional[TwinRun]]] = [(run, None) for run in bases.values()]
    twins = [name for name in runs if name != "base"]
    for i in range(len(runs[twins[0]])):
        for twin in twins:
            run = runs[twin][i]
            order.append((run, bases.get(run.seed)))
    return order


def run_in_order(
    order: Sequence[Tuple[TwinRun, Optional[TwinRun]]],
    train: Callable[[TwinRun], float],
    jobs: int = 1,
    on_failure: Callable[[], None] = lambda: None,
) -> Dict[str, float]:
    """Calls ``train(run)`` for every run of ``order`` (see :func:`training_order`), at most
    ``jobs`` at once, each once the run it starts from has been trained; returns each run's
    ``train`` value by its output folder. With ``jobs`` = 1 the runs train in ``order``, one
    after the other. The first failure stops the scheduling: no other run starts,
    ``on_failure()`` is called (to stop the trainings still going) and the error is raised once
    they have returned."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    pending = list(order)
    done: Dict[str, float] = {}
    running: Dict[Future, TwinRun] = {}
    error: Optional[BaseException] = None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            if error is None:
                for item in list(pending):
                    run, after = item
                    if len(running) >= jobs:
                        break
                    if after is None or after.output_dir in done:
                        pending.remove(item)
                        running[pool.submit(train, run)] = run
            if not running:
                if error is None:
                    names = ", ".join(run.output_dir for run, _ in pending)
                    raise ValueError(f"runs that start from runs not in the order: {names}")
                break  # a failed run's dependants never start
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                run = running.pop(future)
                try:
                    done[run.output_dir] = future.result()
                except BaseException as e:  # noqa: B036 (re-raised below, after the others)
                    if error is None:
                        error = e
                        on_failure()
    if error is not None:
        raise error
    return done


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


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def summarize(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, sample standard deviation; 0 for one value) of the numbers among ``values``."""
    numbers = [v for v in values if _number(v)]
    if not numbers:
        return float("nan"), float("nan")
    spread = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
    return statistics.fmean(numbers), spread


def format_table(
    rows: Dict[str, List[Dict[str, float]]], figures: Dict[str, Dict[str, object]]
) -> str:
    """A markdown table of both twins' evaluations, mean +- spread over seeds, and the paired
    difference (CondConv minus static, seed by seed), with parameters and multiply-adds."""
    names = list(rows)
    seeds = len(rows[names[0]])
    lines = ["| | " + " | ".join(names) + " | difference |", "|---" * (len(names) + 2) + "|"]

    def cell(mean: float, spread: float, signed: bool = False) -> str:
        if not _number(mean):
            return "-"
        text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
        return text + (f" ± {spread:.1f}" if seeds > 1 else "")

    metric_keys = [f"bbox/{m}" for m in METRICS]
    metric_keys += sorted(k for k in rows[names[0]][0] if k.startswith("bbox/AP-"))
    for key in metric_keys:
        label = (
            f"box {key[5:]}" if not key.startswith("bbox/AP-") else f"  AP {key[len('bbox/AP-') :]}"
        )
        per_twin = [[run.get(key, float("nan")) for run in rows[n]] for n in names]
        cells = [cell(*summarize(values)) for values in per_twin]
        delta = ""
        if len(names) == 2 and all(_number(a) and _number(b) for a, b in zip(*per_twin)):
            delta = cell(*summarize([a - b for a, b in zip(*per_twin)]), signed=True)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {delta} |")
    if seeds > 1:
        aps = [" / ".join(f"{run['bbox/AP']:.1f}" for run in rows[n]) for n in names]
        lines.append("| AP per seed | " + " | ".join(aps) + " | |")

    def figure_line(label: str, key: str, fmt: str, diff: bool = True) -> None:
        values = [figures[n].get(key) for n in names]
        cells = [fmt.format(v) if v is not None else "-" for v in values]
        delta = ""
        if diff and len(values) == 2 and all(_number(v) for v in values):
            delta = fmt.format(values[0] - values[1])
            delta = delta if delta.startswith("-") else "+" + delta
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {delta} |")

    figure_line("parameters (M)", "params", "{:.2f}")
    figure_line("  in CondConv experts (M)", "experts", "{:.2f}")
    figure_line("multiply-adds (M)", "madds", "{:.0f}")
    figure_line("input size", "size", "{}", diff=False)
    if all("train_s" in figures[n] for n in names):
        figure_line("training time per run (s)", "train_s", "{:.0f}")
    return "\n".join(lines)
