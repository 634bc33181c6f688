"""Evaluation of a forecaster against persistence and a linear autoregressive baseline on the
same test windows, per horizon."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def persistence_forecast(inputs: np.ndarray, target_index: int, horizon: int) -> np.ndarray:
    """Every horizon gets the last observed target value."""
    last = inputs[:, -1, target_index].astype("float64")
    return np.repeat(last[:, None], horizon, axis=1)


@dataclass
class AutoRegression:
    """Linear AR(p) on the target alone, one least-squares fit per horizon."""

    lags: int
    coef: np.ndarray

    @classmethod
    def fit(cls, inputs: np.ndarray, targets: np.ndarray, target_index: int, lags: int = 24) -> AutoRegression:
        design = cls._design(inputs, target_index, lags)
        coef, *_ = np.linalg.lstsq(design, targets.astype("float64"), rcond=None)
        return cls(lags, coef)

    @staticmethod
    def _design(inputs: np.ndarray, target_index: int, lags: int) -> np.ndarray:
        recent = inputs[:, -lags:, target_index].astype("float64")
        return np.concatenate([recent, np.ones((len(inputs), 1))], axis=1)

    def predict(self, inputs: np.ndarray, target_index: int) -> np.ndarray:
        return np.asarray(self._design(inputs, target_index, self.lags) @ self.coef)


def rmse_per_horizon(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((predictions - targets) ** 2, axis=0))


def mae_per_horizon(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.mean(np.abs(predictions - targets), axis=0)


@dataclass
class EvaluationReport:
    """RMSE and MAE per horizon (index 0 = 1 h ahead) of the model and both baselines, the
    number of test windows, and the residual quantiles that give the uncertainty band."""

    samples: int
    model_rmse: list[float]
    model_mae: list[float]
    persistence_rmse: list[float]
    persistence_mae: list[float]
    ar_rmse: list[float]
    ar_mae: list[float]
    residual_q10: list[float]
    residual_q90: list[float]

    def ratio_to_persistence(self, horizon_hours: int) -> float:
        i = horizon_hours - 1
        return self.model_rmse[i] / self.persistence_rmse[i]

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def evaluate(
    model_predictions: np.ndarray,
    inputs: np.ndarray,
    targets: np.ndarray,
    target_index: int,
    ar: AutoRegression,
) -> EvaluationReport:
    """Score the model and the baselines on exactly the same test windows."""
    horizon = targets.shape[1]
    persistence = persistence_forecast(inputs, target_index, horizon)
    ar_pred = ar.predict(inputs, target_index)
    residuals = targets - model_predictions

    def listed(values: np.ndarray) -> list[float]:
        return [round(float(v), 3) for v in values]

    return EvaluationReport(
        samples=len(targets),
        model_rmse=listed(rmse_per_horizon(model_predictions, targets)),
        model_mae=listed(mae_per_horizon(model_predictions, targets)),
        persistence_rmse=listed(rmse_per_horizon(persistence, targets)),
        persistence_mae=listed(mae_per_horizon(persistence, targets)),
        ar_rmse=listed(rmse_per_horizon(ar_pred, targets)),
        ar_mae=listed(mae_per_horizon(ar_pred, targets)),
        residual_q10=listed(np.quantile(residuals, 0.1, axis=0)),
        residual_q90=listed(np.quantile(residuals, 0.9, axis=0)),
    )
