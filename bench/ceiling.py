"""The 1-bit speed ceiling of pedestrian_adas_0002 against int8 (issue 19), in one run.

    python -m bench.ceiling                 # about 5 minutes on 2 idle cores
    python -m bench.ceiling --quick         # under 2 minutes: checks the script works
    python -m bench.ceiling --checkpoint var/bench_distillation/.../step12.safetensors   # + trained rows

Rows, all at 192x336 (network input; Intel's IRs reshaped to it), timed on random inputs:
- `float`: FlexBin's OpenVINO export of the pretrained float model;
- `nncf_int8`: `nncf.quantize` of that IR (core.export.int8, calibrated on Penn-Fudan's
  training split, prepared as the runtime prepares inputs);
- `nncf_int8_ac`: `nncf.quantize_with_accuracy_control` of that IR, max_drop 0.03 in
  1 - MR^-2 on the validation split;
- `all_1bit_old`: every dense conv that can take binary inputs (41 of 42) 1-bit in weights and
  inputs, no training (accuracy destroyed: speed only), exported by the export code of commit
  OLD_EXPORT_COMMIT (the branch start: loaded from git, so it needs the repository's history);
- `all_1bit`: the same model through today's export (core.export.one_bit);
- `mixed`: `all_1bit` + NNCF int8 on every other conv (1-bit layers in NNCF's ignored scope);
- `mixed_fusing`: the same, but int8 only where NNCF's input quantizer can fuse (convs fed by
  a 1-bit conv stay float: a BinaryConvolution fuses no u8 quantizer after it);
- `suffix_<layer>`: every dense conv from that layer on 1-bit (untrained), NNCF int8 before it,
  as `?format=openvino-int8` makes it: one switch of precision, early wide layers int8 (where
  int8 beats 1-bit on an AMX CPU, see the per-layer table), the rest 1-bit: the speed bound of a
  mix, with its share of conv MACs at 1 bit;
- `intel_fp16`, `intel_fp16_int8`: Intel's IRs of the same detector (--intel-ir);
- `checkpoint<k>` (with --checkpoint): a trained FlexBin checkpoint of pedestrian_adas_0002 at
  192x336 (e.g. one `python -m bench.distillation` kept), exported as the API serves it, and
  `checkpoint<k>_int8`, the same with NNCF int8 on all its other convs, and
  `checkpoint<k>_int8_fusing`, NNCF int8 on its other convs except those a 1-bit conv feeds
  (`?format=openvino-int8`, `core.export.int8`'s default since the run that measured both), and
  `checkpoint<k>_weights8`, 8-bit weights on its float convs with float inputs (`nncf.compress_weights`:
  an experiment on the IR size, not a download format). The two int8 rows of a checkpoint are also
  scored on the calibration (training) images, and the results say which one a job with
  `int8_after_1bit: "auto"` keeps and whether the validation split agrees.
  Each is judged against issue 19's goal: faster than `nncf_int8` and `intel_fp16_int8` at 1 thread
  f32, MR^-2 within the float row's + 0.03, an IR at most half `nncf_int8`'s, and at least 50 % of
  the conv MACs in 1-bit convolutions.

Every row is timed the same way, whole graph with its post-processing (FlexBin's: the network +
DetectionOutput; the old export: its traced decode and NMS; Intel's: DetectionOutput), as
`request.infer([x])` on the compiled model (`core.export.runtime.median_forward_ms`), at 1 and 2
threads, at f32 and at OpenVINO's default precision for the CPU (`compile_config(n, None)`).
Timings are interleaved: each round times every row once per setting, and a cell is the median
over rounds, so a slow spell of a shared machine does not land on one row. Per-op-type times
come from a separate compile with PERF_COUNT (they exclude the per-inference overhead outside
the nodes, so they sum to less than the forward time).
Per-layer times (`per_layer_ms`): each dense conv of the all-1-bit row, in the float, NNCF
int8 and all-1-bit rows (1 thread f32, median of 5 compiles): where 1-bit beats int8 layer by
layer on this CPU, which bounds what any mix of the two can gain.

MR^-2 / AP@0.5 on Penn-Fudan's validation split (the IR actually timed, run by
core.export.runtime.Detector) for FlexBin's rows; the 1-bit rows are untrained, so theirs only
shows that they are accuracy-blind.

Writes bench/results/ceiling.{json,md,png} (`--name` another name, e.g. ceiling_intel_xeon_amx for the
runs kept per CPU kind; `_quick` with --quick): every FlexBin row's MR^-2 with a 95 % bootstrap interval
over the validation images and its paired difference from float, and the frontier plot (MR^-2 against
forward ms, marker area by IR size).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch

from bench import report
from bench.study import stats
from core.checkpoint import pack_checkpoint, unpack_checkpoint
from core.data import read_pennfudan, split_records
from core.detection_metrics import evaluate_detections
from core.export.int8 import (
    compress_weights_int8,
    int8_export,
    kept_int8_file,
    quantize_int8,
    quantize_int8_with_accuracy_control,
    runtime_precisions,
)
from core.export.one_bit import (
    binarize_all,
    export_all_one_bit,
    export_float,
    float_model,
)
from core.export.openvino import (
    detection_tensors,
    export_checkpoint,
    export_openvino,
    layer_times,
)
from core.export.runtime import Detector, compile_config, median_forward_ms
from core.paths import REPO_ROOT as ROOT
from core.paths import default_data_dir
from core.priority import layer_macs
from core.train import ImageCache

OLD_EXPORT_COMMIT = "a8b4147c00393ea03709b719bd1db611b909fd81"
HEIGHT, WIDTH = 192, 336
DEFAULT_INTEL_IR = next((p for p in (ROOT.parent / "shared" / "models" / "pedestrian-detection-adas-0002",
                                     ROOT.parent.parent / "shared" / "models" / "pedestrian-detection-adas-0002")
                         if p.is_dir()), None)
LABELS = {
    "float": "OpenVINO float (FlexBin export)",
    "nncf_int8": "NNCF int8 of the float IR",
    "nncf_int8_ac": "NNCF accuracy-controlled int8 (max_drop 0.03 in 1 - MR^-2)",
    "all_1bit_old": "all 41 dense convs 1-bit, export at the branch start",
    "all_1bit": "all 41 dense convs 1-bit, today's export",
    "mixed": "all 1-bit + NNCF int8 on every other conv",
    "mixed_fusing": "all 1-bit + NNCF int8 where its quantizer fuses (conv1, conv2_1.dw)",
    "intel_fp16": "Intel FP16 IR",
    "intel_fp16_int8": "Intel FP16-INT8 IR",
}
SUFFIX_STARTS = ("features.conv3_1.sep", "features.conv3_2.sep", "features.conv4_1.sep", "features.conv4_2.sep")
"""`suffix_<layer>` rows: 1-bit from that layer on (module order), NNCF int8 before it."""
SETTINGS = ((1, "f32"), (2, "f32"), (1, None), (2, None))  # (threads, precision hint; None: OpenVINO's default)


log = report.log


def setting_key(threads: int, precision: str | None) -> str:
    return f"{threads}t_{precision or 'default'}"


# -- the machine ---------------------------------------------------------------------------
def cpu_info() -> dict[str, Any]:
    """`bench.report.machine()` and the precision OpenVINO picks by default on this CPU (bf16
    with AMX / AVX-512 BF16, f32 on AVX2)."""
    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return report.machine(openvino_default_precision=str(hint.to_string() if hasattr(hint, "to_string") else hint))


# -- the rows ------------------------------------------------------------------------------
def penn_fudan(calibration: int, validation: int) -> dict[str, Any]:
    """Training images for calibration, validation images and their boxes (the fixed split)."""
    train, val = split_records(read_pennfudan(default_data_dir()))
    cache = ImageCache()
    val = val[:validation]
    return {"calibration": [cache.image(r).numpy() for r in train[:calibration]],
            "calibration_truth": [r.boxes for r in train[:calibration]],
            "val": [cache.image(r).numpy() for r in val], "truth": [r.boxes for r in val]}


def miss_rate(detections: list[Any], truth: list[Any]) -> Any:
    return evaluate_detections(detection_tensors(detections), truth)


BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20261205


def image_resamples(images: int) -> np.ndarray:
    """The bootstrap resamples of the validation images (`bench.study.stats.image_resamples`: one
    trained network, images drawn with replacement; a fixed seed, so every row gets the same draws)."""
    return stats.image_resamples(images, BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)


def miss_rate_sample(detections: list[Any], truth: list[Any], weights: np.ndarray | None = None) -> stats.MissRateSample:
    """MR^-2 of one row's detections and under each resample (`weights`, default
    `image_resamples`). Rows sampled with the same weights are paired by image."""
    weights = image_resamples(len(truth)) if weights is None else weights
    return stats.image_sample(detection_tensors(detections), truth, weights)


def old_export_module(commit: str) -> types.ModuleType:
    """core/export/openvino.py as it was at `commit`, loaded from git as its own module (it
    imports today's core.binary, core.checkpoint, core.export.runtime and core.models)."""
    source = subprocess.run(["git", "show", f"{commit}:core/export/openvino.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    name = f"flexbin_export_{commit[:10]}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"git:{commit[:10]}:core/export/openvino.py", "exec"), module.__dict__)  # noqa: S102
    return module


def flexbin_rows(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> {"model": openvino.Model, "spec": its export spec, ...}."""
    model, card = float_model(HEIGHT, WIDTH)
    rows: dict[str, dict[str, Any]] = {}
    log("exporting the float model and the all-1-bit model")
    float_export = export_float(model, card)
    one_bit, layers = export_all_one_bit(model, card)
    # "export" (an OpenVinoExport) where the per-layer table times the row
    rows["float"] = {"model": float_export.model, "spec": float_export.spec, "export": float_export}
    images = data["calibration"]
    started = time.monotonic()
    int8 = int8_export(float_export, images)
    rows["nncf_int8"] = {"model": int8.model, "spec": float_export.spec, "export": int8,
                         "quantize_seconds": round(time.monotonic() - started, 1)}
    log(f"NNCF int8 of the float IR: {time.monotonic() - started:.0f} s on {len(images)} images")
    if args.accuracy_control:
        def metric(detections: list[Any], indices: list[int]) -> float:
            return 1.0 - float(miss_rate(detections, [data["truth"][i] for i in indices]).miss_rate)

        started = time.monotonic()
        rows["nncf_int8_ac"] = {
            "model": quantize_int8_with_accuracy_control(float_export, images, data["val"], metric, max_drop=0.03),
            "spec": float_export.spec, "quantize_seconds": round(time.monotonic() - started, 1)}
        log(f"NNCF accuracy-controlled int8: {time.monotonic() - started:.0f} s")
    try:
        old = old_export_module(args.old_export_commit)
        binary = copy.deepcopy(model)
        binarize_all(binary)
        old_export = old.export_checkpoint(pack_checkpoint(binary, card))
        rows["all_1bit_old"] = {"model": old_export.model, "spec": old_export.spec,
                                "source": f"core/export/openvino.py at {args.old_export_commit[:10]}"}
    except (subprocess.CalledProcessError, ImportError, AttributeError, TypeError) as exc:
        log(f"old export unavailable: {exc}")
        rows["all_1bit_old"] = {"model": None, "missing": f"{type(exc).__name__}: {exc}"}
    rows["all_1bit"] = {"model": one_bit.model, "spec": one_bit.spec, "one_bit_layers": len(layers), "export": one_bit}
    rows["mixed"] = {"model": quantize_int8(one_bit, images, int8_after_1bit=True), "spec": one_bit.spec}
    rows["mixed_fusing"] = {"model": quantize_int8(one_bit, images, int8_after_1bit=False), "spec": one_bit.spec}
    rows.update(suffix_rows(model, card, layers, images))
    return rows


def suffix_rows(model: torch.nn.Module, card: Any, layers: list[str], images: list[np.ndarray]
                ) -> dict[str, dict[str, Any]]:
    """`suffix_<layer>` for each of SUFFIX_STARTS: every dense conv from that one on 1-bit (untrained),
    NNCF int8 on the convs before it, as `?format=openvino-int8` makes it (convs a 1-bit conv feeds
    stay float). On a CPU where int8 beats 1-bit on the wide early layers (AMX), a suffix keeps the
    early layers int8 and switches precision once: the fastest mix, not the 1-bit layers alone."""
    rows: dict[str, dict[str, Any]] = {}
    for start in SUFFIX_STARTS:
        if start not in layers:
            continue
        suffix = layers[layers.index(start):]
        binary = copy.deepcopy(model)
        binarize_all(binary, only=set(suffix))
        export = export_checkpoint(pack_checkpoint(binary, card))
        share = one_bit_mac_share(model, set(suffix))
        rows[f"suffix_{start.removeprefix('features.').removesuffix('.sep')}"] = {
            "model": quantize_int8(export, images, int8_after_1bit=False), "spec": export.spec,
            "label": f"1-bit from {start} on ({len(suffix)} convs, {share:.0%} of conv MACs), NNCF int8 before it "
                     "(`?format=openvino-int8`)", "one_bit_layers": len(suffix), "one_bit_mac_share": round(share, 3)}
    return rows


def checkpoint_rows(paths: list[Path], data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Trained checkpoints as exported (`checkpoint<k>`), with NNCF int8 elsewhere (`checkpoint<k>_int8`),
    with NNCF int8 elsewhere except on the convs a 1-bit conv feeds (`checkpoint<k>_int8_fusing`,
    `int8_after_1bit=False`: their u8 quantizer cannot fuse into the 1-bit conv), and with 8-bit
    weights only (`checkpoint<k>_weights8`, `compress_weights_int8`)."""
    rows: dict[str, dict[str, Any]] = {}
    for k, path in enumerate(paths, start=1):
        model, card = unpack_checkpoint(path.read_bytes())
        export = export_openvino(model, card)
        one_bit = sorted(card.activation_quantizers)
        weights_only = len(card.binary_layers) - len(one_bit)
        what = f"{path.parent.name}/{path.stem}: {checkpoint_layers(len(one_bit), weights_only)}"
        facts = {"source": str(path), "one_bit_layers": len(one_bit), "binary_weight_layers": weights_only,
                 "one_bit_mac_share": round(one_bit_mac_share(model, set(one_bit)), 3)}
        rows[f"checkpoint{k}"] = {"model": export.model, "spec": export.spec, "label": f"FlexBin {what}", **facts}
        rows[f"checkpoint{k}_int8"] = {
            "model": quantize_int8(export, data["calibration"], int8_after_1bit=True), "spec": export.spec,
            "label": f"FlexBin {what}, NNCF int8 elsewhere", **facts}
        rows[f"checkpoint{k}_int8_fusing"] = {
            "model": quantize_int8(export, data["calibration"], int8_after_1bit=False), "spec": export.spec,
            "label": f"FlexBin {what}, NNCF int8 elsewhere but after a 1-bit conv (?format=openvino-int8)", **facts}
        rows[f"checkpoint{k}_weights8"] = {
            "model": compress_weights_int8(export), "spec": export.spec,
            "label": f"FlexBin {what}, 8-bit weights on the float convs (nncf.compress_weights), inputs float", **facts}
    return rows


def checkpoint_layers(one_bit: int, weights_only: int) -> str:
    """'24 convs 1-bit' (weights and inputs), and how many more have 1-bit weights only."""
    return f"{one_bit} convs 1-bit" + (
        f" + {weights_only} with 1-bit weights, float inputs" if weights_only else "")


def one_bit_mac_share(model: torch.nn.Module, one_bit: set[str], height: int = HEIGHT, width: int = WIDTH) -> float:
    """Share of the convolutions' multiply-accumulates (one forward of a height x width image) in
    the `one_bit` layers."""
    convs = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    macs = {name: n for name, n in layer_macs(model, height, width).items() if name in convs}
    return sum(v for n, v in macs.items() if n in one_bit) / max(1, sum(macs.values()))


def int8_goal_checks(row: dict[str, Any], ms: float, int8_row: dict[str, Any], int8_ms: float,
                     float_miss_rate: float | None) -> dict[str, bool]:
    """Issue 19's comparison of a FlexBin row (`miss_rate`, `ir_bytes`, `one_bit_mac_share`, its
    1-thread f32 `ms`) with NNCF int8 of the same float model."""
    return {
        "faster than NNCF int8": ms < int8_ms,
        "MR^-2 within float + 0.03": float_miss_rate is not None and row["miss_rate"] <= float_miss_rate + 0.03,
        "IR at most half NNCF int8's": row["ir_bytes"] <= int8_row["ir_bytes"] / 2,
        ">= 50 % of conv MACs 1-bit": row["one_bit_mac_share"] >= 0.5,
    }


def checkpoint_goals(rows: dict[str, dict[str, Any]], times: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 19's goal for each trained row, on this run's 1-thread f32 medians."""
    key = setting_key(1, "f32")
    float_mr = rows["float"].get("miss_rate")
    goals = []
    for name, row in rows.items():
        if not name.startswith("checkpoint") or name not in times:
            continue
        ms = times[name][key]
        checks = int8_goal_checks(row, ms, rows["nncf_int8"], times["nncf_int8"][key], float_mr)
        checks["faster than Intel FP16-INT8"] = "intel_fp16_int8" in times and ms < times["intel_fp16_int8"][key]
        goals.append({"row": name, "forward_ms_1t_f32": ms, "miss_rate": row["miss_rate"],
                      "ir_bytes": row["ir_bytes"], "one_bit_mac_share": row["one_bit_mac_share"],
                      "checks": checks, "met": all(checks.values())})
    return goals


def auto_picks(rows: dict[str, dict[str, Any]], times: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """For each trained checkpoint, the int8 file a job with `int8_after_1bit: "auto"` keeps
    (`core.export.int8.kept_int8_file`, on the calibration images), beside the
    file that scores better on the validation split, which the job never sees."""
    key = setting_key(1, "f32")
    picks = []
    for name in rows:
        pair = [f"{name}_int8_fusing", f"{name}_int8"]
        if not all(p in times and rows[p].get("calibration_miss_rate") is not None for p in pair):
            continue
        kept = kept_int8_file({p: (rows[p]["calibration_miss_rate"], times[p][key]) for p in pair})
        best_on_val = min(pair, key=lambda p: (rows[p]["miss_rate"], times[p][key]))
        picks.append({"checkpoint": name, "kept": kept, "better_on_validation": best_on_val,
                      "agree": kept == best_on_val,
                      "calibration_miss_rate": {p: rows[p]["calibration_miss_rate"] for p in pair},
                      "miss_rate": {p: rows[p]["miss_rate"] for p in pair}})
    return picks


def auto_lines(picks: list[dict[str, Any]]) -> list[str]:
    if not picks:
        return []
    lines = [('`int8_after_1bit: "auto"` (the lower MR^-2 on the calibration images kept) against the better file '
              "on the validation split:"), ""]
    for p in picks:
        scores = ", ".join(f"`{row}` {p['calibration_miss_rate'][row]:.3f} / {p['miss_rate'][row]:.3f}"
                           for row in p["calibration_miss_rate"])
        lines.append(f"- `{p['checkpoint']}`: keeps `{p['kept']}`, better on validation `{p['better_on_validation']}` "
                     f"({'agree' if p['agree'] else 'disagree'}; calibration / validation MR^-2: {scores})")
    return lines


def accuracy(rows: dict[str, dict[str, Any]], data: dict[str, Any]) -> None:
    """MR^-2 / AP@0.5 of each FlexBin row's IR on the validation images, with a 95 % bootstrap
    interval over images and the paired interval of its difference from the float row (into the
    rows)."""
    samples = {}
    resamples = image_resamples(len(data["truth"]))
    for name, row in rows.items():
        if row["model"] is None or "spec" not in row:
            continue
        xml, weights = serialized(row["model"])
        detections = Detector(xml, weights, {"export": row["spec"]}).detect(data["val"])
        m = miss_rate(detections, data["truth"])
        row["miss_rate"], row["ap50"] = round(m.miss_rate, 4), round(m.ap50, 4)
        samples[name] = miss_rate_sample(detections, data["truth"], resamples)
        ci = samples[name].interval()
        row["miss_rate_ci95"] = [round(ci.lo, 4), round(ci.hi, 4)]
        if name.startswith("checkpoint") and name.endswith(("_int8", "_int8_fusing")):  # what "auto" compares
            on_calibration = Detector(xml, weights, {"export": row["spec"]}).detect(data["calibration"])
            row["calibration_miss_rate"] = round(miss_rate(on_calibration, data["calibration_truth"]).miss_rate, 4)
    for name, sample in samples.items():
        if name != "float" and "float" in samples:
            diff, _ = stats.difference_interval([sample], [samples["float"]])
            rows[name]["minus_float_ci95"] = [round(diff.lo, 4), round(diff.hi, 4)]


def intel_rows(ir_dir: Path | None) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for name, precision in (("intel_fp16", "FP16"), ("intel_fp16_int8", "FP16-INT8")):
        xml = ir_dir / precision / "pedestrian-detection-adas-0002.xml" if ir_dir else None
        if xml is None or not xml.is_file():
            rows[name] = {"model": None, "missing": f"no IR at {xml}"}
            continue
        model = ov.Core().read_model(xml)
        model.reshape([1, 3, HEIGHT, WIDTH])  # its PriorBoxes follow the feature maps
        rows[name] = {"model": model, "scale": 255.0, "files": [str(xml), str(xml.with_suffix(".bin"))],
                      "source": str(xml)}
    return rows


def serialized(model: Any) -> tuple[bytes, bytes]:
    """(model.xml, model.bin) as FlexBin ships an IR (float32 weights, no FP16 compression)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.xml"
        ov.save_model(model, path, compress_to_fp16=False)
        return path.read_bytes(), path.with_suffix(".bin").read_bytes()


def ir_bytes(row: dict[str, Any]) -> int:
    """Bytes of model.xml + model.bin as shipped: Intel's files, FlexBin's as `OpenVinoExport.ir_bytes`
    writes them (float32 weights, no FP16 compression)."""
    if "files" in row:
        return sum(Path(f).stat().st_size for f in row["files"])
    return sum(len(part) for part in serialized(row["model"]))


# -- measurements --------------------------------------------------------------------------
def _input(model: Any, scale: float) -> np.ndarray:
    shape = [int(d) for d in model.inputs[0].get_shape()]
    return np.random.default_rng(0).random(shape, dtype=np.float32) * np.float32(scale)


def time_rows(rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """{row: {setting: median over rounds of the median forward ms}} and, under "rounds", every
    round's value: rounds interleave the rows, so a slow spell of the machine hits all of them.

    Each measurement compiles its row afresh and drops it after: one compiled model alive at a
    time, as in a process serving one detector. (With every row compiled at once, the idle
    models' worker threads competed with the timed one's: 2-thread times doubled in most rounds.)"""
    core = ov.Core()
    names = [name for name, row in rows.items() if row["model"] is not None]
    out: dict[str, dict[str, Any]] = {name: {"rounds": {}} for name in names}
    for threads, precision in SETTINGS:
        key = setting_key(threads, precision)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                model = rows[name]["model"]
                request = core.compile_model(model, "CPU", compile_config(threads, precision)).create_infer_request()
                x = _input(model, rows[name].get("scale", 1.0))
                samples[name].append(round(median_forward_ms(lambda r=request, x=x: r.infer([x]), warmup=5,
                                                             budget_s=args.seconds, max_runs=5000), 3))
                del request
        for name, values in samples.items():
            out[name][key] = round(float(np.median(values)), 3)
            out[name]["rounds"][key] = values
        log(f"timed {key}: " + ", ".join(f"{n} {out[n][key]:.2f}" for n in names))
    return out


def machine_load() -> dict[str, float]:
    """Load average and the CPU time counters (/proc/stat: user, system, idle, steal ticks)."""
    try:
        load = float(Path("/proc/loadavg").read_text().split()[0])
        ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return {}
    return {"loadavg_1min": load, "busy_ticks": sum(ticks[:3]) + sum(ticks[5:7]), "idle_ticks": ticks[3] + ticks[4],
            "steal_ticks": ticks[7] if len(ticks) > 7 else 0}


def load_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    if not before or not after:
        return {}
    total = sum(after[k] - before[k] for k in ("busy_ticks", "idle_ticks", "steal_ticks")) or 1
    return {"loadavg_1min_start": before["loadavg_1min"], "loadavg_1min_end": after["loadavg_1min"],
            "cpu_busy_share": round((after["busy_ticks"] - before["busy_ticks"]) / total, 3),
            "cpu_steal_share": round((after["steal_ticks"] - before["steal_ticks"]) / total, 3)}


def profile_rows(rows: dict[str, dict[str, Any]], runs: int) -> dict[str, dict[str, Any]]:
    """Per row and setting: ms per op type (PERF_COUNT, median over `runs` inferences), and how the
    convolutions run (layer type and runtime precision counts of the compiled graph)."""
    core = ov.Core()
    out: dict[str, dict[str, Any]] = {}
    for name, row in rows.items():
        if row["model"] is None:
            continue
        out[name] = {}
        x = _input(row["model"], row.get("scale", 1.0))
        for threads, precision in SETTINGS:
            config = {**compile_config(threads, precision), "PERF_COUNT": True}
            compiled = core.compile_model(row["model"], "CPU", config)
            request = compiled.create_infer_request()
            for _ in range(5):
                request.infer([x])
            per_run: list[Counter[str]] = []
            for _ in range(runs):
                request.infer([x])
                run: Counter[str] = Counter()
                for info in request.profiling_info:
                    run[info.node_type] += info.real_time.total_seconds() * 1e3
                per_run.append(run)
            # median over runs, per op type and of the per-run total (robust to a disturbed run)
            by_type = Counter({k: float(np.median([r[k] for r in per_run])) for k in set().union(*per_run)})
            out[name][setting_key(threads, precision)] = {
                "ms_by_op_type": {k: round(v, 3) for k, v in by_type.most_common() if v >= 0.0005},
                "profiled_total_ms": round(float(np.median([sum(r.values()) for r in per_run])), 3),
                "convolutions": {f"{k}/{p}": n for (k, p), n in sorted(runtime_precisions(compiled).items())},
            }
    return out


# -- the report ----------------------------------------------------------------------------
PER_LAYER_ROWS = ("float", "nncf_int8", "all_1bit")


def per_layer_ms(rows: dict[str, dict[str, Any]], repeats: int) -> dict[str, dict[str, float]]:
    """{row: {layer: ms}} for every dense conv of the all-1-bit row, in the float, NNCF int8 and
    all-1-bit rows, 1 thread f32: `core.export.openvino.layer_times` (PERF_COUNT node times split over
    the layers each compiled node fused; a 1-bit layer's standalone binarization counts against it,
    an int8 layer's input quantizer where it fused), the median over `repeats` compiles. Where 1-bit
    beats int8 layer by layer, and where it loses: what a checkpoint mixing the two can gain."""
    exports = {name: rows[name]["export"] for name in PER_LAYER_ROWS if "export" in rows.get(name, {})}
    if len(exports) < len(PER_LAYER_ROWS):
        return {}
    layers = [layer for layer, precision in exports["all_1bit"].layers.items() if precision == "binary_weights_activations"]
    out: dict[str, dict[str, float]] = {}
    for name, export in exports.items():
        runs = [layer_times(export, threads=1) for _ in range(repeats)]
        out[name] = {layer: round(statistics.median(r.get(layer, 0.0) for r in runs), 4) for layer in layers}
    return out


def per_layer_lines(per_layer: dict[str, dict[str, float]]) -> list[str]:
    if not all(name in per_layer for name in PER_LAYER_ROWS):
        return []
    fl, i8, ob = (per_layer[name] for name in PER_LAYER_ROWS)
    gain = {layer: i8[layer] - ob[layer] for layer in ob}
    wins = [layer for layer, g in gain.items() if g > 0]
    losses = [layer for layer, g in gain.items() if g < 0]
    total = "**sum**"

    def cell(values: dict[str, float], layer: str) -> str:
        return f"{sum(values.values()) if layer == total else values[layer]:.3f}"

    return ["", "## Layer by layer: 1-bit against NNCF int8 (ms, 1 thread f32, PERF_COUNT)", "",
            (f"1-bit is faster than int8 on {len(wins)} of {len(ob)} layers, by {sum(gain[x] for x in wins):.3f} ms "
            f"together, and slower on {len(losses)}, by {-sum(gain[x] for x in losses):.3f} ms. A layer's 1-bit "
            "time includes its standalone binarization (a FakeQuantize after a depthwise conv); time between "
            "layers of different precision (reorders, quantizers that do not fuse) is in no layer."), "",
            *report.markdown_table([*ob, total], [
                ("layer", lambda x: x), ("float", lambda x: cell(fl, x)), ("NNCF int8", lambda x: cell(i8, x)),
                ("1-bit", lambda x: cell(ob, x)),
                ("int8 − 1-bit", lambda x: f"{sum(gain.values()) if x == total else gain[x]:+.3f}")],
                align="lrrrr")]


def ratios(times: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    pairs = (("all_1bit", "nncf_int8"), ("all_1bit_old", "nncf_int8"), ("all_1bit", "all_1bit_old"),
             ("all_1bit", "float"), ("mixed", "nncf_int8"), ("mixed_fusing", "nncf_int8"),
             ("all_1bit", "intel_fp16_int8"), ("nncf_int8", "float"),
             *((c, base) for c in times if c.startswith(("checkpoint", "suffix_"))
               for base in ("nncf_int8", "intel_fp16_int8")))
    for a, b in pairs:
        if a in times and b in times:
            keys = [setting_key(t, p) for t, p in SETTINGS]
            out[f"{a} / {b}"] = {k: round(times[a][k] / times[b][k], 3) for k in keys if k in times[a] and k in times[b]}
    return out


def machine_line(cpu: dict[str, Any]) -> str:
    """`bench.report.machine_text`, also for the first run's record (`isa` as a list)."""
    if "isa" in cpu and "cpu_isa" not in cpu:
        cpu = {**cpu, "cpu_isa": " ".join(cpu["isa"])}
    return report.machine_text(cpu)


def markdown(result: dict[str, Any]) -> str:
    cpu = result["machine"]
    times, profile, rows = result["forward_ms"], result["profile"], result["rows"]
    keys = [setting_key(t, p) for t, p in SETTINGS]
    header = (f"192x336 network input, random inputs, whole graph with its post-processing. {machine_line(cpu)} "
              f"(OpenVINO's default precision here: {cpu.get('openvino_default_precision')}); commit "
              f"{report.commit_text(result['git'])}. "
              f"Each cell: median over {result['config']['rounds']} interleaved rounds of the median forward time "
              f"({result['config']['seconds']} s per row per round). Machine load during the run: 1-min load average "
              f"{cpu.get('loadavg_1min_start')} -> {cpu.get('loadavg_1min_end')}, CPU busy {cpu.get('cpu_busy_share')}, "
              f"stolen by the hypervisor {cpu.get('cpu_steal_share')} (a shared machine: compare rows, not runs).")
    def ms(name: str, key: str) -> str | None:
        return f"{times[name][key]:.2f}" if name in times else None

    def convolutions(name: str) -> str:
        if name not in times:
            return f"missing: {rows[name].get('missing')}"
        return ", ".join(f"{k} x{n}" for k, n in profile[name][keys[0]]["convolutions"].items())

    lines = ["# The 1-bit speed ceiling of pedestrian_adas_0002 (`python -m bench.ceiling`)", "", header, "",
             *report.markdown_table(rows, [
                 ("row", lambda n: rows[n]["label"]),
                 *((f"forward ms {k.replace('_', ' ')}", lambda n, k=k: ms(n, k)) for k in keys),
                 ("IR MB", lambda n: f"{rows[n]['ir_bytes'] / 1e6:.2f}" if n in times else None),
                 ("MR^-2 [95 % CI]", lambda n: _mr_text(rows[n]) if n in times else None),
                 ("MR^-2 - float [95 % CI]", lambda n: report.interval_text(rows[n].get("minus_float_ci95"))),
                 ("MR^-2 training images", lambda n: rows[n].get("calibration_miss_rate")),
                 ("convolutions (compiled, 1t f32)", convolutions)], align="lrrrrrrrrl"),
             "", (f"MR^-2 intervals: {BOOTSTRAP_RESAMPLES} bootstrap resamples of the validation images (percentile, "
             "paired across rows); the trained networks are held fixed, so training noise is not in them."),
             "", "![frontier](" + result.get("plot", "") + ")" if result.get("plot") else "",
             "", "Least-disturbed round (min over rounds of the median forward ms; noise only adds time):", "",
             *report.markdown_table(times, [
                 ("row", lambda n: rows[n]["label"]),
                 *((k.replace("_", " "), lambda n, k=k: f"{min(times[n]['rounds'][k]):.2f}") for k in keys)],
                 align="lrrrr"),
             "", "Ratios (forward ms, medians):", "",
             *(f"- {pair}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items())
               for pair, values in result["ratios"].items())]
    op_types = list(dict.fromkeys(op for n in times for op in profile[n][keys[0]]["ms_by_op_type"]))
    shown = [op for op in op_types if any((profile[n][keys[0]]["ms_by_op_type"].get(op) or 0) >= 0.005 for n in times)]
    totals = {"**sum of nodes**": {n: f"**{profile[n][keys[0]]['profiled_total_ms']:.3f}**" for n in times}}

    def op_ms(op: str, name: str) -> str | None:
        if op in totals:
            return totals[op][name]
        value = profile[name][keys[0]]["ms_by_op_type"].get(op)
        return None if value is None else f"{value:.3f}"

    lines += ["", "## Where the time goes (ms per op type, PERF_COUNT, median of the runs, 1 thread f32)", "",
              *report.markdown_table([*shown, *totals], [
                  ("op type", lambda op: op), *((n, lambda op, n=n: op_ms(op, n)) for n in times)],
                  align="l" + "r" * len(times))]
    lines += per_layer_lines(result.get("per_layer_ms", {}))
    lines += ["", *goal_lines(result.get("goals", []))]
    lines += ["", *auto_lines(result.get("auto_picks", []))]
    lines += ["", "Per-op-type profiles at every setting are in ceiling.json (`profile`).", "",
              f"Total run time: {result['total_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def _mr_text(row: dict[str, Any]) -> str | None:
    if row.get("miss_rate") is None:
        return None
    ci = row.get("miss_rate_ci95")
    return f"{row['miss_rate']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def plot(result: dict[str, Any], path: Path) -> None:
    """The frontier: validation MR^-2 (95 % interval) against forward ms (1 thread, f32), marker
    area by IR size; rows without an MR^-2 (Intel's IRs) as vertical lines."""
    fig, ax = report.figure(1, size=(8, 5.5))
    key = setting_key(1, "f32")
    rows, times = result["rows"], result["forward_ms"]
    for name, row in rows.items():
        if name not in times:
            continue
        ms = times[name][key]
        if row.get("miss_rate") is None:
            ax.axvline(ms, color="grey", linestyle=":", linewidth=1)
            ax.annotate(row["label"], (ms, 0.98), rotation=90, fontsize=7, va="top", ha="right",
                        xycoords=("data", "axes fraction"))
            continue
        lo, hi = row.get("miss_rate_ci95") or (row["miss_rate"], row["miss_rate"])
        ax.errorbar(ms, row["miss_rate"], yerr=[[row["miss_rate"] - lo], [hi - row["miss_rate"]]], fmt="none",
                    ecolor="grey", elinewidth=0.8)
        ax.scatter(ms, row["miss_rate"], s=40 * row["ir_bytes"] / 1e6, alpha=0.6)
        ax.annotate(name, (ms, row["miss_rate"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    report.label(ax, x="forward ms (1 thread, f32)", y="validation MR^-2 (lower is better)",
                 title="MR^-2 against speed; marker area: IR size", legend=False)
    report.save_figure(fig, path)


def readme_section(results: Path) -> str:
    head = "### The 1-bit speed ceiling against int8 (`make bench-ceiling`, [`ceiling.md`](ceiling.md))"
    # `ceiling` and the runs kept per CPU kind (`ceiling_<cpu>`, renamed by hand)
    return report.section(head, report.load_all("ceiling", results), report.each_run(_readme_lines))


def _readme_lines(result: dict[str, Any]) -> list[str]:
    cpu, times, rows = result["machine"], result["forward_ms"], result["rows"]
    keys = [setting_key(1, "f32"), setting_key(2, "f32")]
    timed = [name for name in rows if name in times]
    lines = [(f"`python -m bench.ceiling`: pedestrian_adas_0002 at 192x336, every row timed the same way "
              f"(whole graph, interleaved rounds, median forward ms); {machine_line(cpu)}. The 1-bit rows are "
              "untrained (speed only: their MR^-2 shows they are accuracy-blind)."), "",
             *report.markdown_table(timed, [
                 ("row", lambda n: rows[n]["label"]),
                 *((f"ms {k.replace('_', ' ')}", lambda n, k=k: f"{times[n][k]:.2f}") for k in keys),
                 ("IR MB", lambda n: f"{rows[n]['ir_bytes'] / 1e6:.2f}"),
                 ("MR^-2", lambda n: rows[n].get("miss_rate"))], align="lrrrr"), ""]
    pair = result["ratios"].get("all_1bit / nncf_int8", {})
    if pair:
        lines.append("All-1-bit against NNCF int8 (forward ms ratio, < 1 is faster): "
                     + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in pair.items()) + ".")
    return lines + ["", *goal_lines(result.get("goals", [])), "", *auto_lines(result.get("auto_picks", []))]


def goal_lines(goals: list[dict[str, Any]]) -> list[str]:
    """Issue 19's goal for trained checkpoints, one line per row."""
    if not goals:
        return []
    lines = ["Trained checkpoints against issue 19's goal (1 thread f32):", ""]
    for g in goals:
        checks = "; ".join(f"{k}: {'yes' if v else 'no'}" for k, v in g["checks"].items())
        lines.append(f"- `{g['row']}` ({g['forward_ms_1t_f32']:.2f} ms, MR^-2 {g['miss_rate']}, "
                     f"{g['one_bit_mac_share']:.0%} of MACs 1-bit): {'**met**' if g['met'] else 'not met'} ({checks})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the script works")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per row per round (default 0.6)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 9)")
    parser.add_argument("--calibration-images", type=int, default=98, help="NNCF calibration images (train split)")
    parser.add_argument("--validation-images", type=int, default=32, help="validation images for MR^-2 (val split)")
    parser.add_argument("--no-accuracy-control", dest="accuracy_control", action="store_false",
                        help="skip the accuracy-controlled int8 row")
    parser.add_argument("--old-export-commit", default=OLD_EXPORT_COMMIT)
    parser.add_argument("--intel-ir", type=Path, default=DEFAULT_INTEL_IR)
    parser.add_argument("--name", default="ceiling",
                        help="results name (default ceiling; runs are kept per CPU kind, e.g. ceiling_intel_xeon_amx)")
    parser.add_argument("--checkpoint", type=Path, action="append", default=[],
                        help="a trained pedestrian_adas_0002 checkpoint at 192x336 to time beside int8 (repeatable)")
    args = parser.parse_args()
    args.seconds = args.seconds or (0.2 if args.quick else 0.6)
    args.rounds = args.rounds or (2 if args.quick else 9)
    if args.quick:
        args.calibration_images = min(args.calibration_images, 8)
        args.validation_images = min(args.validation_images, 8)
    started = time.monotonic()

    load_before = machine_load()
    data = penn_fudan(args.calibration_images, args.validation_images)
    rows = {**flexbin_rows(args, data), **intel_rows(args.intel_ir), **checkpoint_rows(args.checkpoint, data)}
    log("MR^-2 of FlexBin's rows")
    accuracy(rows, data)
    for row in rows.values():
        if row["model"] is not None:
            row["ir_bytes"] = ir_bytes(row)
    times = time_rows(rows, args)
    log("profiling")
    profile = profile_rows(rows, runs=5 if args.quick else 30)
    log("per-layer times")
    per_layer = per_layer_ms(rows, repeats=1 if args.quick else 5)

    result = {
        "machine": {**cpu_info(), **load_summary(load_before, machine_load())}, "git": report.git_commit(), "quick": args.quick,
        "config": {"input": [1, 3, HEIGHT, WIDTH], "seconds": args.seconds, "rounds": args.rounds,
                   "calibration_images": args.calibration_images, "validation_images": args.validation_images,
                   "old_export_commit": args.old_export_commit,
                   "timing": "request.infer([x]) on the compiled model, median_forward_ms, interleaved rounds, "
                             "one compiled model alive at a time"},
        "rows": {name: {"label": LABELS.get(name), **{k: v for k, v in row.items() if k not in ("model", "files", "spec", "export")}}
                 for name, row in rows.items()},
        "forward_ms": times, "ratios": ratios(times), "profile": profile, "per_layer_ms": per_layer,
        "goals": checkpoint_goals(rows, times), "auto_picks": auto_picks(rows, times),
        "total_seconds": round(time.monotonic() - started, 1),
    }
    name = f"{args.name}_quick" if args.quick else args.name
    plot(result, report.RESULTS / f"{name}.png")
    result["plot"] = f"{name}.png"
    path = report.write_results(name, result, markdown(result))
    log(f"wrote {path}, .md and .png")


if __name__ == "__main__":
    main()
