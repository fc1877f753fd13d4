"""Assemble ``report.md`` (+ CSV tables and PNG figures) from the pipeline's outputs.

Inputs: an evaluation folder (``taviseg evaluate``: summary.json, per_patient.csv,
per_frame.csv, comparison.csv, examples/), optionally tuning folders (``taviseg tune``:
best_params.json, trials.csv) and training folders (``taviseg train``: fold_<k>/history.csv; by
default the parent of each evaluated model folder). The data set (for the overlay frames) is
the one named in summary.json unless another root is given.
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.errors import ReportError
from training.report import figures, tables

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportResult:
    """Where the report and its parts were written."""

    out_dir: Path
    report_md: Path
    tables: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts.

    Raises:
        ReportError: the file is missing.
    """
    if not path.is_file():
        raise ReportError(f"{path}: not found")
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _float(value: Any) -> float:
    return math.nan if value in (None, "") else float(value)


def read_history(train_dir: Path) -> list[list[dict[str, float]]]:
    """The per-epoch history of every fold under ``train_dir`` (``fold_<k>/history.csv``)."""
    histories = []
    for path in sorted(Path(train_dir).glob("fold_*/history.csv")):
        rows = [{k: _float(v) for k, v in row.items()} for row in read_csv(path)]
        if rows:
            histories.append(rows)
    return histories


def read_tuning(path: Path) -> dict[str, Any]:
    """A tuning folder's best_params.json plus, per architecture, the best COMPLETE value.

    Raises:
        ReportError: no best_params.json in the folder.
    """
    path = Path(path)
    best_file = path / "best_params.json"
    if not best_file.is_file():
        raise ReportError(f"{path}: not a tuning folder (no best_params.json)")
    data = json.loads(best_file.read_text(encoding="utf-8"))
    best_by_arch: dict[str, float] = {}
    trials = path / "trials.csv"
    for row in read_csv(trials) if trials.is_file() else []:
        if row["state"] == "COMPLETE" and row["value"] and row["architecture"]:
            arch, value = row["architecture"], float(row["value"])
            best_by_arch[arch] = max(value, best_by_arch.get(arch, -math.inf))
    data["best_by_architecture"] = best_by_arch
    return data


def _optim_of(provenance: Mapping[str, Any]) -> tuple[str | None, float | None]:
    """Optimizer name and learning rate recorded in a model folder's provenance."""
    config = provenance.get("config") or provenance.get("train_config") or {}
    optim = config.get("optim") if isinstance(config, Mapping) else None
    if isinstance(optim, Mapping):
        return optim.get("name"), optim.get("lr")
    return None, None


def build_report(
    evaluation_dir: str | Path,
    out_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    tuning: Sequence[str | Path] = (),
    training: Mapping[str, str | Path] | None = None,
    skip_flops: bool = False,
    search_space: Mapping[str, Sequence[Any]] | None = None,
) -> ReportResult:
    """Write report.md, the tables as CSV and the figures as PNG into ``out_dir``.

    Args:
        evaluation_dir: ``taviseg evaluate`` output folder.
        out_dir: Report folder (created; figures in ``figures/``).
        data_root: Data set of the overlay frames (default: the evaluated one).
        tuning: ``taviseg tune`` output folders (Table 1 space, Table 2 tuning DSC, Table 2b).
        training: ``{model: train output folder}`` for the curves (default: parent of each
            evaluated model folder, when it holds ``fold_<k>/history.csv``).
        skip_flops: Do not count FLOPs (Table 2 leaves the column empty).
        search_space: Table 1 space when no tuning folder says (default: conf/tune.yaml).

    Raises:
        ReportError: a missing or malformed input.
    """
    from training.report.flops import measure

    ev = Path(evaluation_dir)
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    summary_path = ev / "summary.json"
    if not summary_path.is_file():
        raise ReportError(f"{ev}: not an evaluation folder (no summary.json)")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    models: dict[str, Any] = summary.get("models") or {}
    if not models:
        raise ReportError(f"{summary_path}: no models")
    per_patient = read_csv(ev / "per_patient.csv")
    per_frame = read_csv(ev / "per_frame.csv")
    comparison = read_csv(ev / "comparison.csv") if (ev / "comparison.csv").is_file() else []
    studies = [read_tuning(Path(t)) for t in tuning]

    # Table 1: the space actually searched.
    space = next((s["search_space"] for s in studies if s.get("search_space")), None) or search_space
    if space is None:
        from training.tune import load_tune_config

        space = load_tune_config().search_space.as_dict()
    result_tables = [tables.table1_search_space(space)]

    # Table 2: configuration, measured size/cost, tuning DSC.
    costs: dict[tuple, Any] = {}
    rows2 = []
    for name, m in models.items():
        spec = _load_spec(m["folder"])
        optim, lr = _optim_of(spec.provenance if spec else {})
        key = (m["architecture"], m["encoder"], int(m["input_size"]), spec.in_channels if spec else 1)
        if key not in costs:
            costs[key] = measure(key[0], key[1], key[2], in_channels=key[3], flops=not skip_flops)
        best_dsc = [s["best_by_architecture"][m["architecture"]] for s in studies
                    if m["architecture"] in s["best_by_architecture"]]
        rows2.append({
            "model": name, "architecture": m["architecture"], "encoder": m["encoder"],
            "input_size": m["input_size"], "optimizer": optim, "lr": lr,
            "params_m": costs[key].params_m, "gflops": costs[key].gflops,
            "tuning_dsc": max(best_dsc) if best_dsc else None,
        })
    result_tables.append(tables.table2_configurations(rows2))
    if studies:
        result_tables.append(tables.table_tuning(
            [{"study": s["study"], "best_params": s.get("best_params"), "best_value": s.get("best_value"),
              "counts": s.get("counts") or {}} for s in studies]
        ))
    confidence = float((summary.get("config") or {}).get("confidence", 0.95))
    result_tables.append(tables.table3_patient_level(models, confidence))
    if comparison:
        result_tables.append(tables.table_comparison(
            comparison, {n: m["architecture"] for n, m in models.items()}
        ))
    table_paths = {t.key: t.write_csv(out / f"{t.key}.csv") for t in result_tables}

    # Figures.
    fig_paths: dict[str, Path] = {}
    histories = {}
    for name, m in models.items():
        train_dir = Path(training[name]) if training and name in training else Path(m["folder"]).parent
        hist = read_history(train_dir)
        if hist:
            histories[name] = hist
        else:
            logger.warning("%s: no fold_<k>/history.csv under %s; no training curve", name, train_dir)
    if histories:
        fig_paths["training_curves"] = figures.plot_training_curves(histories, fig_dir / "training_curves.png")
    by_model_patient = {n: [_float(r["dice"]) for r in per_patient if r["model"] == n] for n in models}
    by_model_frame = {n: [_float(r["dice"]) for r in per_frame if r["model"] == n] for n in models}
    fig_paths["dice_boxplots"] = figures.plot_dice_boxplots(by_model_patient, by_model_frame,
                                                           fig_dir / "dice_boxplots.png")
    points = {n: [(_float(r["dice"]), _float(r["assd_mm"])) for r in per_patient if r["model"] == n]
              for n in models}
    fig_paths["dice_assd_scatter"] = figures.plot_dice_assd_scatter(points, fig_dir / "dice_assd_scatter.png")
    overlay = _overlay_panels(models, ev, Path(data_root or summary["data"]["root"]))
    if overlay:
        fig_paths["overlays"] = figures.plot_overlays(overlay, fig_dir / "overlays.png")

    report_md = out / "report.md"
    report_md.write_text(_markdown(summary, result_tables, fig_paths, out), encoding="utf-8")
    logger.info("report written to %s (%d tables, %d figures)", report_md, len(table_paths), len(fig_paths))
    return ReportResult(out_dir=out, report_md=report_md, tables=table_paths, figures=fig_paths)


def _load_spec(folder: str) -> Any:
    from segmentation.errors import ModelError
    from segmentation.models.folder import load_model_folder

    try:
        return load_model_folder(folder).spec
    except ModelError as exc:
        logger.warning("model folder %s unreadable (%s); Table 2 uses summary.json only", folder, exc)
        return None


def _overlay_panels(models: Mapping[str, Any], ev: Path, data_root: Path) -> dict[str, list[dict[str, Any]]]:
    """Frames, truth and predicted masks of each model's saved best/worst examples."""
    from tavidata.errors import DatasetError
    from tavidata.format import Dataset, read_gray

    try:
        dataset = Dataset.load(data_root)
    except DatasetError as exc:
        logger.warning("no overlays: %s", exc)
        return {}
    records = {r.frame_id: r for r in dataset.records}
    panels: dict[str, list[dict[str, Any]]] = {}
    for name, m in models.items():
        for ex in m.get("examples") or []:
            rec = records.get(ex["frame_id"])
            pred_path = ev / ex["prediction"]
            if rec is None or not pred_path.is_file():
                logger.warning("%s: example %s not found; skipped", name, ex["frame_id"])
                continue
            panels.setdefault(name, []).append({
                "title": f"{ex['kind']} {ex['frame_id']} DSC {ex['dice']:.3f}",
                "image": dataset.read_image(rec), "truth": dataset.read_mask(rec),
                "prediction": read_gray(pred_path) > 0,
            })
    return panels


def _markdown(summary: Mapping[str, Any], result_tables: list, fig_paths: Mapping[str, Path], out: Path) -> str:
    data = summary.get("data") or {}
    lines = [
        "# Aortic-root segmentation benchmark: report",
        "",
        f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} by `taviseg report`. "
        f"Data set: {data.get('name')!s} ({data.get('patients')} patients, {data.get('frames')} "
        f"frames); splits sha256 {str((summary.get('splits') or {}).get('sha256', ''))[:12]}.",
        "",
        f"Protocol: {summary.get('protocol', '')}.",
        "",
        "Model selection:",
        "",
    ]
    for name, m in (summary.get("models") or {}).items():
        sel = m.get("model_selection") or {}
        lines.append(f"- **{name}**: {sel.get('statement', 'not checked')}")
    lines.append("")
    for t in result_tables:
        lines += [t.to_markdown(), f"CSV: [{t.key}.csv]({t.key}.csv)", ""]
    captions = {
        "training_curves": "Loss and Dice per epoch, mean across folds with a 95% band "
                           "(2.5-97.5th percentile of folds)",
        "dice_boxplots": "Dice per model (per patient and per frame)",
        "dice_assd_scatter": "Per-patient Dice against ASSD",
        "overlays": "Best and worst frames with ground truth (green) and prediction (red)",
    }
    lines += ["## Figures", ""]
    for key, path in fig_paths.items():
        rel = path.relative_to(out).as_posix()
        lines += [f"![{captions.get(key, key)}]({rel})", "", f"*{captions.get(key, key)}.*", ""]
    paper_note = (
        "Paper figures (Laptev et al., Front. Cardiovasc. Med. 2025) are quoted beside ours; they "
        "come from 80 real patients and 200 tuning trials per architecture on a GPU, so numbers "
        "from a phantom or a short CPU run are not expected to match."
    )
    lines += ["## Notes", "", paper_note, ""]
    return "\n".join(lines)

