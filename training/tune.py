"""Hyper-parameter tuning: an Optuna study (TPE sampler + Hyperband pruner, i.e. BOHB).

Each trial draws a configuration from the search space (:mod:`training.search_space`), trains
it on one fold (``study.fold``) with :func:`training.train.train_fold` and reports the
validation Dice (that fold's VAL patients, never its test patients) after every epoch;
Hyperband prunes unpromising trials. The trial's value is its best validation Dice.

Failure handling (the paper had 27 crashed DeepLabV3+ trials): out of memory, a non-finite loss
or a model that cannot be built raise :class:`~training.errors.TrialFailedError`, which the
study catches: the trial is recorded as FAIL with the reason in its ``fail_reason`` user
attribute and the study goes on. Any other exception is a bug and stops the worker.

Storage and resuming: a local SQLite file (``<out>/study.db``) by default, or any SQLAlchemy URL
(PostgreSQL for many workers on many machines: run the same command with the same
``--storage``). Rerunning continues the study (``load_if_exists``). Trials of a killed worker
stay RUNNING in the database; the heartbeat of :class:`optuna.storages.RDBStorage` marks them
FAIL once their heartbeat is older than the grace period, and the retry callback re-queues the
same parameters (the retried trial resumes from the killed trial's checkpoint when that folder
is on this machine).

The study stops once ``n_trials`` trials have FINISHED (COMPLETE or PRUNED) across all workers
and runs; trials other workers are still running then are finished too, so the total can
exceed ``n_trials`` by at most (workers - 1). ``max_failed_trials`` FAIL trials also stop it.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import inspect
import io
import json
import logging
import math
import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from tavicore.config import CONF_DIR, ConfigError, apply_overrides, from_dict, load_config, setting, to_dict
from tavicore.fileio import write_text_atomic
from training.config import TrainConfig, check_model_names, load_train_config
from training.errors import NonFiniteLossError, TrainingError, TrialFailedError, TuneError
from training.search_space import PARAM_NAMES, SearchSpace, apply_params, check_search_space, suggest

logger = logging.getLogger(__name__)

#: Default configuration file of ``taviseg tune``.
DEFAULT_TUNE_CONFIG = CONF_DIR / "tune.yaml"
#: Name of the default SQLite study file in the output folder.
STUDY_DB = "study.db"
#: Attempts to open the storage (parallel workers race to create the schema).
OPEN_ATTEMPTS = 3
#: States counted towards ``n_trials``.
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class SamplerConfig:
    """TPE sampler settings."""

    seed: int = setting(0, ge=0, doc="base seed (mixed with the study size and worker id)")
    n_startup_trials: int = setting(10, ge=0, doc="random trials before TPE takes over")
    multivariate: bool = setting(True, doc="multivariate TPE (joint density over parameters)")
    constant_liar: bool = setting(True, doc="avoid duplicate suggestions across parallel workers")


@dataclass(frozen=True)
class PrunerConfig:
    """Hyperband pruner settings (resource = training epochs)."""

    kind: Literal["hyperband", "none"] = setting("hyperband", doc="pruner ('none' disables pruning)")
    min_resource: int = setting(1, ge=1, doc="epochs before a trial can be pruned")
    max_resource: int | None = setting(None, ge=1, doc="epochs of a full trial (default: train epochs)")
    reduction_factor: int = setting(3, ge=2, doc="Hyperband reduction factor")


@dataclass(frozen=True)
class StudyConfig:
    """Where the study lives and when it stops."""

    name: str = setting("taviseg", doc="study name (suffixed with -<architecture> per architecture)")
    storage: str | None = setting(None, doc="SQLAlchemy URL; default sqlite:///<out>/study.db")
    n_trials: int = setting(200, ge=1, doc="finished (COMPLETE or PRUNED) trials to reach")
    timeout_s: float | None = setting(None, gt=0, doc="stop this worker after this many seconds")
    fold: int = setting(0, ge=0, doc="fold whose train/val patients each trial uses")
    max_failed_trials: int = setting(50, ge=1, doc="stop after this many FAIL trials in the study")
    heartbeat_interval_s: int = setting(60, ge=1, doc="RUNNING trials write a heartbeat this often")
    grace_period_s: int | None = setting(
        180, ge=1, doc="a RUNNING trial without heartbeat for this long is failed and retried"
    )
    max_retry: int = setting(1, ge=0, doc="times a heartbeat-stale trial is re-queued")
    keep_weights: bool = setting(False, doc="keep each trial's checkpoint and weight files")

    def __post_init__(self) -> None:
        if self.grace_period_s is not None and self.grace_period_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"grace_period_s ({self.grace_period_s}) must exceed heartbeat_interval_s "
                f"({self.heartbeat_interval_s}), or live trials would be failed"
            )


@dataclass(frozen=True)
class TuneConfig:
    """``conf/tune.yaml``: the study settings, the search space and the base training config."""

    base_train_config: Path | None = setting(
        None, doc="training config held constant (relative to conf/); default: TrainConfig defaults"
    )
    train_overrides: dict[str, Any] = setting(
        default_factory=dict, doc="dotted-key overrides of the base training config"
    )
    study: StudyConfig = setting(default_factory=StudyConfig, doc="study settings")
    sampler: SamplerConfig = setting(default_factory=SamplerConfig, doc="TPE sampler")
    pruner: PrunerConfig = setting(default_factory=PrunerConfig, doc="Hyperband pruner")
    search_space: SearchSpace = setting(default_factory=SearchSpace, doc="Table 1 of the paper")

    def base_train(self) -> TrainConfig:
        """The training configuration held constant during tuning.

        ``base_train_config`` (relative paths are relative to ``conf/``) with
        ``train_overrides``; without a file, the :class:`TrainConfig` defaults (the paper's
        protocol: 35 epochs, batch size auto, the paper's augmentation) with the first value of
        each searched parameter as placeholders, then ``train_overrides``.

        Raises:
            ConfigError: missing file or a bad override.
        """
        overrides = _dotted(self.train_overrides)
        if self.base_train_config is not None:
            path = self.base_train_config
            path = path if path.is_absolute() else CONF_DIR / path
            return load_train_config(path, overrides=overrides or None)
        s = self.search_space
        data = {
            "model": {"architecture": s.architecture[0], "encoder": s.encoder[0],
                      "input_size": s.input_size[0]},
            "optim": {"name": s.optimizer[0], "lr": s.lr[0]},
        }
        return from_dict(TrainConfig, apply_overrides(data, overrides), source="train_overrides")


def _dotted(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested overrides to dotted keys, so ``{augment: {enabled: false}}`` changes one
    key of the base configuration's ``augment`` section instead of replacing the section."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_tune_config(path: str | Path = DEFAULT_TUNE_CONFIG, overrides: Mapping[str, Any] | None = None) -> TuneConfig:
    """Load ``conf/tune.yaml`` (or another file) with dotted-key overrides.

    Raises:
        ConfigError: missing file, unknown key, bad value.
    """
    return load_config(path, TuneConfig, overrides=overrides)


# --------------------------------------------------------------------------- storage / study


def storage_url(storage: str | None, out_dir: Path) -> str:
    """The SQLAlchemy URL of the study: ``storage`` as given, else ``<out_dir>/study.db``."""
    if storage:
        return storage
    return f"sqlite:///{(Path(out_dir) / STUDY_DB).resolve()}"


def open_storage(url: str, study_cfg: StudyConfig) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage with heartbeat and retry of stale trials.

    SQLite gets a 60 s busy timeout so that several local workers can share one file.

    Raises:
        TuneError: the database cannot be opened (the message names the URL without password).
    """
    try:
        from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry  # optuna >= 4.9
    except ImportError:  # pragma: no cover - older optuna
        from optuna.storages import RetryFailedTrialCallback as Retry
    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    cb_kw = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        kwargs = {cb_kw: Retry(max_retry=study_cfg.max_retry, inherit_intermediate_values=True)}
    last: Exception | None = None
    for attempt in range(OPEN_ATTEMPTS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            try:
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs,
                    heartbeat_interval=study_cfg.heartbeat_interval_s,
                    grace_period=study_cfg.grace_period_s, **kwargs,
                )
            except ImportError as exc:
                raise TuneError(f"storage {_redact(url)}: database driver missing: {exc}") from exc
            except (SQLAlchemyError, ValueError) as exc:
                last = exc
        # Workers started together race to create the schema; the loser retries shortly.
        logger.info("opening %s failed (attempt %d): %s", _redact(url), attempt + 1, last)
        if attempt + 1 < OPEN_ATTEMPTS:
            time.sleep(0.5 * (attempt + 1))
    raise TuneError(f"cannot open study storage {_redact(url)}: {last}") from last


def study_name_for(base: str, architecture: str | None) -> str:
    """``base`` or ``base-<architecture>`` for a per-architecture study."""
    return f"{base}-{architecture}" if architecture else base


def make_sampler(cfg: SamplerConfig, *, n_existing: int, shared: bool) -> optuna.samplers.TPESampler:
    """A TPE sampler whose seed mixes the base seed with the study size.

    The study size makes a resumed run draw new startup points instead of repeating the first
    run's; on shared storage the host and process id are mixed in too so that parallel workers
    do not draw the same random startup trials.
    """
    entropy = [cfg.seed, n_existing]
    if shared:
        host = int.from_bytes(hashlib.sha256(socket.gethostname().encode()).digest()[:4], "little")
        entropy += [host, os.getpid()]
    seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=cfg.n_startup_trials,
            multivariate=cfg.multivariate, constant_liar=cfg.constant_liar,
        )


def make_pruner(cfg: PrunerConfig, epochs: int) -> optuna.pruners.BasePruner:
    """Hyperband over epochs (``max_resource`` defaults to the training epochs), or no pruning."""
    if cfg.kind == "none":
        return optuna.pruners.NopPruner()
    max_resource = cfg.max_resource or epochs
    if cfg.min_resource > max_resource:
        raise ConfigError(
            f"pruner.min_resource {cfg.min_resource} exceeds max_resource {max_resource} (epochs)"
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=cfg.min_resource, max_resource=max_resource,
        reduction_factor=cfg.reduction_factor,
    )


# --------------------------------------------------------------------------- objective


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a (CUDA or host) out-of-memory error from torch."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


TrainFoldFn = Callable[..., Any]


@dataclass
class TrialObjective:
    """The Optuna objective: train one configuration on one fold, return its best val Dice.

    ``train_fold`` defaults to :func:`training.train.train_fold`; it is an attribute so that a
    test can count calls or make a trial crash.
    """

    base: TrainConfig
    space: SearchSpace
    dataset: Any
    splits: Any
    fold: int
    out_dir: Path
    keep_weights: bool = False
    train_fold: TrainFoldFn | None = None
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def __call__(self, trial: optuna.trial.Trial) -> float:
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("fold", self.fold)
        params = suggest(trial, self.space)
        cfg = apply_params(self.base, params)
        # A retried (heartbeat-stale) trial inherits the user attributes of the trial it
        # retries, so it continues in that trial's folder (resuming its checkpoint).
        source = int(trial.user_attrs.get("source_trial", trial.number))
        trial.set_user_attr("source_trial", source)
        trial_dir = self.out_dir / "trials" / f"trial_{int(source):04d}"
        logger.info("trial %d: %s (fold %d, %s)", trial.number, params, self.fold, trial_dir)

        def on_epoch(result: Any) -> None:
            losses = (float(result.train_loss), float(result.val_loss))
            if not all(math.isfinite(v) for v in losses):
                raise TrialFailedError(
                    f"non-finite loss at epoch {result.epoch}: train {losses[0]}, val {losses[1]}"
                )
            trial.report(float(result.val_dice), step=int(result.epoch))
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned at epoch {result.epoch} (val Dice {float(result.val_dice):.4f})"
                )

        fit = self.train_fold
        if fit is None:
            from training.train import train_fold as fit
        try:
            result = fit(cfg, self.dataset, self.splits, self.fold, trial_dir,
                         epoch_callback=on_epoch, progress=False)
        except TrialFailedError as exc:
            _record_failure(trial, str(exc))
            raise
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            reason = _failure_reason(exc)
            if reason is None:
                raise
            _record_failure(trial, reason)
            raise TrialFailedError(f"trial {trial.number}: {reason}") from exc
        finally:
            if not self.keep_weights:
                _drop_weights(trial_dir)
        value = float(result.best_val_dice)
        if not math.isfinite(value):
            _record_failure(trial, f"non-finite best validation Dice {value}")
            raise TrialFailedError(f"trial {trial.number}: non-finite best validation Dice {value}")
        trial.set_user_attr("best_epoch", int(result.best_epoch))
        return value


def _failure_reason(exc: BaseException) -> str | None:
    """The recorded reason for a crash that must not stop the study, else None.

    Out of memory (``torch.OutOfMemoryError`` or a RuntimeError saying so), a non-finite loss
    (:class:`~training.errors.NonFiniteLossError`, ``FloatingPointError``, or a TrainingError
    reporting a NaN/inf loss) and model build errors (:class:`~segmentation.errors.ModelError`).
    """
    from segmentation.errors import ModelError

    if is_out_of_memory(exc):
        _free_memory()
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"out of memory: {first}"
    if isinstance(exc, ModelError):
        return f"model build error: {exc}"
    if isinstance(exc, (NonFiniteLossError, FloatingPointError)) or (
        isinstance(exc, TrainingError) and _NON_FINITE_LOSS.search(str(exc))
    ):
        return f"non-finite loss: {exc}"
    return None


#: How training.train words a non-finite loss ("training loss is nan; lower optim.lr ...").
_NON_FINITE_LOSS = re.compile(r"loss (is|was|became) (nan|inf|-inf)\b", re.IGNORECASE)


def _record_failure(trial: optuna.trial.Trial, reason: str) -> None:
    logger.warning("trial %d failed: %s", trial.number, reason)
    trial.set_user_attr("fail_reason", reason[:2000])


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _drop_weights(trial_dir: Path) -> None:
    """Delete a finished trial's checkpoints and weights (history and logs stay)."""
    if not trial_dir.is_dir():
        return
    for pattern in ("*.pt", "*.safetensors"):
        for path in trial_dir.rglob(pattern):
            path.unlink(missing_ok=True)


class _StopOnFailures:
    """Stop the study once it holds ``limit`` FAIL trials."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        if failed >= self.limit:
            logger.error("study %s: %d failed trials, stopping", study.study_name, failed)
            study.stop()


# --------------------------------------------------------------------------- driver


def run_tune(
    cfg: TuneConfig,
    data_root: str | Path,
    out_dir: str | Path,
    *,
    base: TrainConfig | None = None,
    architecture: str | None = None,
    train_fold: TrainFoldFn | None = None,
) -> TuneResult:
    """Create or resume the study and optimise until it is done; export the results.

    Args:
        cfg: Tuning configuration (``cfg.study.storage`` None -> ``<out_dir>/study.db``).
        data_root: Data-set folder with its ``splits.json``.
        out_dir: Output folder (trial folders, trials.csv, best_params.json, best_config.yaml).
        base: Base training configuration (default: :meth:`TuneConfig.base_train`).
        architecture: Tune this architecture only (study ``<name>-<architecture>``).
        train_fold: Training function (default :func:`training.train.train_fold`).

    Returns:
        The exported :class:`TuneResult`.

    Raises:
        ConfigError: bad search space, fold or base configuration.
        TuneError: storage cannot be opened.
        DatasetError / SplitError: data set or splits missing or inconsistent.
    """
    from tavidata.format import Dataset
    from tavidata.splits import SPLITS_FILENAME, check_splits, load_splits

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    space = cfg.search_space.restrict(architecture) if architecture else cfg.search_space
    check_search_space(space)
    if base is None:
        base = cfg.base_train()
    check_model_names(base.model)
    dataset = Dataset.load(data_root)
    splits = load_splits(Path(data_root) / SPLITS_FILENAME)
    check_splits(splits, dataset)
    if not 0 <= cfg.study.fold < len(splits.folds):
        raise ConfigError(
            f"study.fold {cfg.study.fold} does not exist; the splits have folds 0..{len(splits.folds) - 1}"
        )

    url = storage_url(cfg.study.storage, out_dir)
    storage = open_storage(url, cfg.study)
    name = study_name_for(cfg.study.name, architecture)
    n_existing = _count_trials(storage, name)
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=make_sampler(cfg.sampler, n_existing=n_existing, shared=cfg.study.storage is not None),
        pruner=make_pruner(cfg.pruner, base.epochs),
    )
    study.set_user_attr("search_space", space.as_dict())
    study.set_user_attr("fold", cfg.study.fold)
    study.set_user_attr("dataset", str(dataset.meta.get("name", "")))
    objective = TrialObjective(
        base=base, space=space, dataset=dataset, splits=splits, fold=cfg.study.fold,
        out_dir=out_dir, keep_weights=cfg.study.keep_weights, train_fold=train_fold,
    )
    _fail_stale(study)
    done = _finished(study)
    logger.info(
        "study %s at %s: %d finished of %d requested, %d configurations in the space",
        name, _redact(url), done, cfg.study.n_trials, space.size(),
    )
    if done < cfg.study.n_trials:
        study.optimize(
            objective,
            timeout=cfg.study.timeout_s,
            catch=(TrialFailedError,),
            callbacks=[
                optuna.study.MaxTrialsCallback(cfg.study.n_trials, states=FINISHED_STATES),
                _StopOnFailures(cfg.study.max_failed_trials),
            ],
            gc_after_trial=True,
        )
    _fail_stale(study)
    return export_study(study, out_dir, base)


def _count_trials(storage: optuna.storages.BaseStorage, name: str) -> int:
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def _fail_stale(study: optuna.Study) -> None:
    """Fail (and re-queue) RUNNING trials whose heartbeat is older than the grace period."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _redact(url: str) -> str:
    """A storage URL with any password replaced by ``***``."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


# --------------------------------------------------------------------------- results

#: Columns of ``trials.csv``.
TRIAL_COLUMNS = (
    "number", "state", "value", *PARAM_NAMES, "best_epoch", "last_epoch", "worker", "pid",
    "retried_from", "fail_reason", "datetime_start", "datetime_complete", "duration_s",
)


@dataclass(frozen=True)
class TuneResult:
    """What a tuning run leaves behind (paths are in the output folder)."""

    study_name: str
    best_value: float | None
    best_params: dict[str, Any] | None
    best_trial: int | None
    counts: dict[str, int]
    trials_csv: Path
    best_params_json: Path
    best_config_yaml: Path | None


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One ``trials.csv`` row (:data:`TRIAL_COLUMNS`) per trial of the study, by number."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.state == TrialState.COMPLETE else None,
            **{name: t.params.get(name) for name in PARAM_NAMES},
            "best_epoch": t.user_attrs.get("best_epoch"),
            "last_epoch": max(t.intermediate_values) if t.intermediate_values else None,
            "worker": t.user_attrs.get("worker"),
            "pid": t.user_attrs.get("pid"),
            "retried_from": t.user_attrs.get("source_trial") if t.user_attrs.get("source_trial") != t.number else None,
            "fail_reason": t.user_attrs.get("fail_reason"),
            "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
            "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
            "duration_s": round(duration, 3) if duration is not None else None,
        })
    return rows


def export_study(study: optuna.Study, out_dir: str | Path, base: TrainConfig) -> TuneResult:
    """Write ``trials.csv``, ``best_params.json`` and ``best_config.yaml`` into ``out_dir``.

    ``best_config.yaml`` is a ``conf/train``-style file (the base configuration with the best
    trial's parameters) that ``taviseg train --config`` reads as is. Files are replaced
    atomically, so that several workers exporting into one folder never leave a torn file.

    Returns:
        The :class:`TuneResult` (best fields None while no trial is COMPLETE).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    counts = {s.name: sum(r["state"] == s.name for r in rows) for s in TrialState}
    trials_csv = out_dir / "trials.csv"
    write_text_atomic(trials_csv, _csv_text(rows))
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    summary: dict[str, Any] = {
        "study": study.study_name,
        "direction": "maximize",
        "objective": "best validation Dice (fold's val patients) over the trial's epochs",
        "fold": study.user_attrs.get("fold"),
        "search_space": study.user_attrs.get("search_space"),
        "counts": counts,
        "best_trial": best.number if best else None,
        "best_value": best.value if best else None,
        "best_params": dict(best.params) if best else None,
        "best_epoch": best.user_attrs.get("best_epoch") if best else None,
    }
    best_json = out_dir / "best_params.json"
    write_text_atomic(best_json, json.dumps(summary, indent=2) + "\n")
    best_yaml = None
    if best is not None:
        cfg = apply_params(base, best.params)
        header = (
            f"# Best configuration of Optuna study {study.study_name!r}: trial {best.number}, "
            f"validation Dice {best.value:.4f} (fold {study.user_attrs.get('fold')}).\n"
            "# Written by `taviseg tune`; train it with `taviseg train --config <this file>`.\n"
        )
        best_yaml = out_dir / "best_config.yaml"
        write_text_atomic(best_yaml, header + yaml.safe_dump(to_dict(cfg), sort_keys=False))
        logger.info("study %s: best trial %d, val Dice %.4f, %s", study.study_name,
                    best.number, best.value, dict(best.params))
    else:
        logger.warning("study %s: no COMPLETE trial yet, no best configuration", study.study_name)
    return TuneResult(
        study_name=study.study_name,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else None,
        best_trial=best.number if best else None,
        counts=counts,
        trials_csv=trials_csv,
        best_params_json=best_json,
        best_config_yaml=best_yaml,
    )


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TRIAL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()
