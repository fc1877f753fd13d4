"""Domain errors of the training package (training, tuning, evaluation, report)."""

from tavicore.errors import TavisegError


class TrainingError(TavisegError):
    """Base class of errors raised by the training package."""


class TuneError(TrainingError):
    """A hyper-parameter study cannot be set up or run (storage, search space, study settings)."""


class TrialFailedError(TuneError):
    """One tuning trial crashed (out of memory, non-finite loss, model build error).

    Optuna records the trial as FAIL (reason in its ``fail_reason`` user attribute) and the
    study goes on.
    """


class EvaluationError(TrainingError):
    """Evaluation inputs are inconsistent (model folder, splits, provenance) or a statistic is ill-posed."""


class ReportError(TrainingError):
    """A report input (evaluation folder, training history, study) is missing or malformed."""


class NonFiniteLossError(TrainingError):
    """A training or validation loss became NaN or infinite (names fold and epoch)."""
