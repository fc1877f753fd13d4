"""The report's tables, mirroring the paper's Tables 1-3 and its model comparison.

Each table is a :class:`Table` (title, columns, rows, note) written as Markdown into
``report.md`` and as CSV beside it. Where the paper gives a figure for the same quantity, a
``paper ...`` column quotes it (numbers restated in docs/benchmark.md).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.search_space import PAPER_SEARCH_SPACE, PARAM_NAMES

ARCHITECTURE_NAMES = {
    "unetplusplus": "U-Net++", "linknet": "LinkNet", "fpn": "FPN", "pspnet": "PSPNet",
    "deeplabv3plus": "DeepLabV3+", "manet": "MA-Net", "unet": "U-Net",
}
ENCODER_NAMES = {
    "efficientnet-b0": "EfficientNet-B0", "efficientnet-b4": "EfficientNet-B4",
    "se_resnext50_32x4d": "SE-ResNeXt50", "resnet50": "ResNet-50", "resnet101": "ResNet-101",
    "se_resnext101_32x4d": "SE-ResNeXt101", "tu-regnetx_120": "RegNetX-120",
    "timm-regnetx_120": "RegNetX-120", "resnet18": "ResNet-18", "resnet34": "ResNet-34",
    "mobilenet_v2": "MobileNetV2",
}
OPTIMIZER_NAMES = {"adam": "Adam", "radam": "RAdam", "rmsprop": "RMSprop"}


@dataclass(frozen=True)
class PaperConfig:
    """One row of the paper's Table 2 (encoder as printed)."""

    encoder: str
    input_size: int
    optimizer: str
    lr: float
    params_m: float
    gflops: float
    tuning_dsc: float


#: Table 2 of the paper (encoder column as printed; see docs/benchmark.md, "Corrections", on its swapped rows).
PAPER_TABLE2: dict[str, PaperConfig] = {
    "unetplusplus": PaperConfig("efficientnet-b4", 896, "rmsprop", 1e-4, 72.4, 502.1, 0.913),
    "linknet": PaperConfig("se_resnext101_32x4d", 512, "rmsprop", 1e-3, 17.9, 53.2, 0.91),
    "fpn": PaperConfig("se_resnext101_32x4d", 512, "rmsprop", 1e-3, 19.4, 99.2, 0.916),
    "pspnet": PaperConfig("se_resnext101_32x4d", 512, "adam", 1e-3, 47.7, 24.2, 0.906),
    "deeplabv3plus": PaperConfig("se_resnext101_32x4d", 512, "rmsprop", 1e-4, 18.6, 113.6, 0.915),
    "manet": PaperConfig("efficientnet-b4", 896, "rmsprop", 1e-3, 25.6, 39.1, 0.913),
}


@dataclass(frozen=True)
class PaperResult:
    """One row of the paper's Table 3 (median and 95 % bootstrap CI over patients)."""

    dsc: float
    dsc_low: float
    dsc_high: float
    assd: float
    assd_low: float
    assd_high: float


#: Table 3 of the paper (U-Net++ ASSD CI as corrected in docs/benchmark.md, "Corrections").
PAPER_TABLE3: dict[str, PaperResult] = {
    "deeplabv3plus": PaperResult(0.929, 0.915, 0.938, 4.619, 4.034, 5.578),
    "fpn": PaperResult(0.933, 0.924, 0.941, 4.371, 3.985, 5.469),
    "linknet": PaperResult(0.934, 0.920, 0.939, 4.567, 3.848, 5.420),
    "manet": PaperResult(0.942, 0.934, 0.951, 4.067, 3.384, 4.387),
    "pspnet": PaperResult(0.936, 0.929, 0.943, 4.051, 3.742, 4.910),
    "unetplusplus": PaperResult(0.926, 0.917, 0.939, 4.894, 3.962, 5.511),
}

#: Pairs the paper reports as significantly different (Wilcoxon, Holm).
PAPER_SIGNIFICANT_PAIRS = frozenset(
    {frozenset({"manet", "unetplusplus"}), frozenset({"manet", "linknet"}),
     frozenset({"pspnet", "unetplusplus"})}
)


@dataclass
class Table:
    """A titled table: column names, rows of cell values, an optional note."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    note: str = ""

    def to_markdown(self) -> str:
        """The table as GitHub-flavoured Markdown (title as a heading, note below)."""
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("| " + " | ".join("---" for _ in self.columns) + " |")
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"

    def write_csv(self, path: str | Path) -> Path:
        """Write the rows as CSV (empty cells for missing values)."""
        path = Path(path)
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.columns)
            for row in self.rows:
                writer.writerow(["" if _missing(v) else v for v in row])
        return path


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell(value: Any) -> str:
    if _missing(value):
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def arch_name(name: str) -> str:
    """Display name of an architecture (``manet`` -> ``MA-Net``)."""
    return ARCHITECTURE_NAMES.get(name, name)


def encoder_name(name: str) -> str:
    """Display name of an encoder (``se_resnext101_32x4d`` -> ``SE-ResNeXt101``)."""
    return ENCODER_NAMES.get(name, name)


def _display(param: str, value: Any) -> str:
    if param == "architecture":
        return arch_name(value)
    if param == "encoder":
        return encoder_name(value)
    if param == "optimizer":
        return OPTIMIZER_NAMES.get(value, value)
    if param == "lr":
        return f"{float(value):.0e}"
    return str(value)


def table1_search_space(space: Mapping[str, Sequence[Any]]) -> Table:
    """Table 1: the searched hyper-parameters (ours) beside the paper's values."""
    table = Table("table1_search_space", "Table 1. Hyper-parameter search space",
                  ["hyperparameter", "values (this study)", "values (paper)"])
    for param in PARAM_NAMES:
        ours = ", ".join(_display(param, v) for v in space.get(param, ()))
        paper = ", ".join(_display(param, v) for v in PAPER_SEARCH_SPACE[param])
        table.rows.append([param.replace("_", " "), ours, paper])
    table.note = ("Held constant: batch size rule, epochs, augmentation, activations, optimizer "
                  "internals. Input size 624 is padded to 640 for architectures needing a "
                  "multiple of 32.")
    return table


def table2_configurations(rows: Iterable[Mapping[str, Any]]) -> Table:
    """Table 2: the configuration of each model with measured parameters and FLOPs.

    Each input row has keys model, architecture, encoder, input_size, optimizer, lr,
    params_m, gflops, tuning_dsc (None where unknown).
    """
    table = Table(
        "table2_configurations", "Table 2. Configuration per model, measured size and cost",
        ["model", "architecture", "encoder", "input", "optimizer", "LR", "params (M)",
         "FLOPs (G)", "tuning DSC", "paper encoder", "paper input", "paper optimizer",
         "paper LR", "paper params (M)", "paper FLOPs (G)", "paper tuning DSC"],
    )
    for r in rows:
        p = PAPER_TABLE2.get(r["architecture"])
        table.rows.append([
            r["model"], arch_name(r["architecture"]), encoder_name(r["encoder"]), r["input_size"],
            OPTIMIZER_NAMES.get(r.get("optimizer") or "", r.get("optimizer")),
            _display("lr", r["lr"]) if r.get("lr") else None,
            _round(r.get("params_m"), 2), _round(r.get("gflops"), 2), _round(r.get("tuning_dsc"), 3),
            encoder_name(p.encoder) if p else None, p.input_size if p else None,
            OPTIMIZER_NAMES[p.optimizer] if p else None, _display("lr", p.lr) if p else None,
            p.params_m if p else None, p.gflops if p else None, p.tuning_dsc if p else None,
        ])
    table.note = (
        "Parameters: sum of p.numel(); FLOPs: torch.utils.flop_counter (2 per multiply-add) for "
        "one 1-channel frame at the network input size (624 padded to 640). The paper's encoder "
        "column appears swapped for U-Net++, LinkNet, FPN and DeepLabV3+ (their parameter counts "
        "match the other encoder, docs/benchmark.md); its FLOPs match 512 px inputs. Tuning DSC: "
        "best validation Dice of a COMPLETE trial of that architecture."
    )
    return table


def table_tuning(studies: Iterable[Mapping[str, Any]]) -> Table:
    """Best trial and trial counts of each tuning study."""
    table = Table("table2b_tuning", "Table 2b. Tuning studies (best trial per study)",
                  ["study", "architecture", "encoder", "input", "optimizer", "LR", "best val DSC",
                   "complete", "pruned", "failed"])
    for s in studies:
        p = s.get("best_params") or {}
        table.rows.append([
            s["study"], arch_name(p["architecture"]) if p.get("architecture") else None,
            encoder_name(p["encoder"]) if p.get("encoder") else None, p.get("input_size"),
            OPTIMIZER_NAMES.get(p.get("optimizer"), p.get("optimizer")),
            _display("lr", p["lr"]) if p.get("lr") else None, _round(s.get("best_value"), 4),
            s["counts"].get("COMPLETE", 0), s["counts"].get("PRUNED", 0), s["counts"].get("FAIL", 0),
        ])
    return table


def table3_patient_level(models: Mapping[str, Mapping[str, Any]], confidence: float = 0.95) -> Table:
    """Table 3: median over patients with bootstrap CI, ours beside the paper's.

    ``models`` is ``summary.json``'s ``models`` mapping.
    """
    pct = f"{confidence:.0%}"
    table = Table(
        "table3_patient_level", "Table 3. Patient-level evaluation (median over patients)",
        ["model", "architecture", "patients", "frames", "DSC median", f"DSC {pct} CI",
         "ASSD median (mm)", f"ASSD {pct} CI (mm)", "HD95 median (mm)", f"HD95 {pct} CI (mm)",
         "paper DSC", "paper DSC CI", "paper ASSD (mm)", "paper ASSD CI (mm)"],
    )
    for name, m in models.items():
        p = PAPER_TABLE3.get(m["architecture"])
        d, a, h = m["dice"], m["assd_mm"], m.get("hd95_mm") or {}
        table.rows.append([
            name, arch_name(m["architecture"]), m["n_patients"], m["n_frames"],
            _round(d.get("estimate"), 3), _ci(d, 3), _round(a.get("estimate"), 3), _ci(a, 3),
            _round(h.get("estimate"), 3), _ci(h, 3),
            p.dsc if p else None, f"{p.dsc_low:.3f}-{p.dsc_high:.3f}" if p else None,
            p.assd if p else None, f"{p.assd_low:.3f}-{p.assd_high:.3f}" if p else None,
        ])
    table.note = ("Per patient: aggregate of its frames' Dice/ASSD/HD95 (fold k's weights on fold "
                  "k's test patients); CI: percentile bootstrap over patients.")
    return table


def table_comparison(rows: Iterable[Mapping[str, Any]], architectures: Mapping[str, str]) -> Table:
    """Model comparison: paired Wilcoxon signed-rank on per-patient Dice, Holm-corrected.

    Args:
        rows: ``comparison.csv`` rows (or :class:`training.stats.Comparison` as dicts).
        architectures: model name -> architecture (to quote the paper's verdict).
    """
    table = Table(
        "table4_comparison", "Model comparison (paired Wilcoxon signed-rank, per-patient DSC, Holm)",
        ["model A", "model B", "patients", "median DSC A", "median DSC B", "median diff",
         "W", "p", "p (Holm)", "significant", "paper"],
    )
    for r in rows:
        a, b = architectures.get(r["model_a"]), architectures.get(r["model_b"])
        paper = None
        if a in PAPER_TABLE3 and b in PAPER_TABLE3 and a != b:
            paper = "significant" if frozenset({a, b}) in PAPER_SIGNIFICANT_PAIRS else "not reported significant"
        table.rows.append([
            r["model_a"], r["model_b"], int(r["n_patients"]), _round(_f(r["median_a"]), 4),
            _round(_f(r["median_b"]), 4), _round(_f(r["median_difference"]), 4),
            _round(_f(r["statistic"]), 4), _round(_f(r["p_value"]), 4), _round(_f(r["p_holm"]), 4),
            "yes" if str(r["significant"]).lower() in ("true", "1", "yes") else "no", paper,
        ])
    return table


def _f(value: Any) -> float:
    if value in (None, ""):
        return math.nan
    return float(value)


def _round(value: Any, digits: int) -> float | None:
    if value is None or value == "":
        return None
    v = float(value)
    return None if math.isnan(v) else round(v, digits)


def _ci(ci: Mapping[str, Any], digits: int) -> str | None:
    low, high = ci.get("low"), ci.get("high")
    if low is None or high is None or any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return None
    return f"{low:.{digits}f}-{high:.{digits}f}"
