"""The twin's forecaster: a ridge-regression base over the last day of features and the weather
expected over the horizon, corrected by an LSTM that learns what the linear model misses,
forecasting 1–24 h ahead at once.

Why two parts: a direct multi-horizon LSTM trained on all horizons at once neglects the first
hours (its 1 h error ends up far above persistence), while a linear model over the recent
features is hard to beat at short horizons. The LSTM therefore learns the residual of the
linear model; the sum is never much worse than the linear model and better where the
dynamics are non-linear (wind shifts, stagnation episodes).

Why the linear base forecasts the change from the last observation, with its own penalty per
horizon: a ridge penalty shrinks towards "no change" (persistence) rather than towards the mean,
and the penalty chosen on validation for each horizon lets the 1 h forecast stay close to
persistence while the 24 h forecast learns the return to typical levels. One penalty for all
horizons, on levels, made the 1 h forecast worse than persistence on some stations.

Why the weather over the horizon is an input: what the air does tomorrow depends mostly on the
wind and mixing tomorrow. Operationally those covariates come from a weather forecast; a
planner's what-if ("a calmer, warmer day") changes exactly them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass
class Scaler:
    """Per-feature standardisation fitted on the training split only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, inputs: np.ndarray) -> Scaler:
        flat = inputs.reshape(-1, inputs.shape[-1])
        std = flat.std(axis=0)
        return cls(flat.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, inputs: np.ndarray) -> np.ndarray:
        return ((inputs - self.mean) / self.std).astype("float32")

    def to_json(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, list[float]]) -> Scaler:
        return cls(np.asarray(data["mean"]), np.asarray(data["std"]))


@dataclass
class TrainingConfig:
    """Hyper-parameters; the defaults are what the benchmark uses."""

    lookback: int = 48
    horizon: int = 24
    linear_hours: int = 24
    ridge_alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    lstm_units: int = 64
    dense_units: int = 64
    epochs: int = 30
    batch_size: int = 256
    patience: int = 4
    learning_rate: float = 1e-3
    seed: int = 7
    threads: int = 2

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Forecaster:
    """A trained twin model: scaler, ridge coefficients and the Keras residual LSTM."""

    features: list[str]
    future_features: list[str]
    target: str
    config: TrainingConfig
    scaler: Scaler
    ridge_coef: np.ndarray
    target_scale: float
    keras_model: Any
    residual_weights: np.ndarray | None = None
    """Per-horizon weight of the LSTM correction (0–1), fitted on validation; None = 1."""
    linear_base: str = "change"
    """What the ridge part predicts: "change" since the last observed target value, or "level"
    (models stored before the change-based base)."""
    history: dict[str, list[float]] = field(default_factory=dict)
    train_seconds: float = 0.0

    def scale_future(self, future: np.ndarray) -> np.ndarray:
        """Standardise covariates with the statistics of the same features in the past window."""
        idx = [self.features.index(f) for f in self.future_features]
        return ((future - self.scaler.mean[idx]) / self.scaler.std[idx]).astype("float32")

    def linear_design(self, scaled: np.ndarray, scaled_future: np.ndarray) -> np.ndarray:
        hours = self.config.linear_hours
        recent = scaled[:, -hours:, :].reshape(len(scaled), -1)
        ahead = scaled_future.reshape(len(scaled_future), -1)
        return np.concatenate([recent, ahead, np.ones((len(scaled), 1), dtype="float32")], axis=1)

    @property
    def series(self) -> str:
        """Store key: the target, marked `@observed` for a model that uses no weather forecast."""
        return self.target if self.future_features else f"{self.target}@observed"

    def linear_offset(self, inputs: np.ndarray) -> np.ndarray | float:
        """What the ridge prediction is added to: the last observed target value, or 0 for levels."""
        if self.linear_base == "level":
            return 0.0
        return np.asarray(inputs[:, -1, self.features.index(self.target)], dtype="float64")[:, None]

    def network_inputs(self, scaled: np.ndarray, scaled_future: np.ndarray) -> list[np.ndarray]:
        if not self.future_features:
            return [scaled]
        return [scaled, scaled_future.reshape(len(scaled_future), -1)]

    def predict(self, inputs: np.ndarray, future: np.ndarray) -> np.ndarray:
        """Forecasts (samples × horizon) in the target's unit from raw windows and covariates."""
        scaled, scaled_future = self.scaler.transform(inputs), self.scale_future(future)
        base = self.linear_design(scaled, scaled_future) @ self.ridge_coef + self.linear_offset(inputs)
        # predict_on_batch runs a compiled function: an eager call is 100× slower on a busy CPU.
        residual = np.asarray(self.keras_model.predict_on_batch(self.network_inputs(scaled, scaled_future)))
        weights = self.residual_weights if self.residual_weights is not None else 1.0
        return np.asarray(base + residual * self.target_scale * weights, dtype="float64")


def _ridge(design: np.ndarray, targets: np.ndarray, alpha: float) -> np.ndarray:
    """Closed-form ridge regression (the intercept column is not penalised)."""
    gram = design.T @ design
    penalty = alpha * np.eye(gram.shape[0])
    penalty[-1, -1] = 0.0
    return np.linalg.solve(gram + penalty, design.T @ targets).astype("float32")


def _best_ridge(
    design: np.ndarray, targets: np.ndarray, val_design: np.ndarray, val_targets: np.ndarray,
    alphas: Sequence[float],
) -> np.ndarray:
    """Per horizon (target column), the ridge fit whose penalty gives the lowest validation error."""
    best_error = np.full(targets.shape[1], np.inf)
    best_coef = np.zeros((design.shape[1], targets.shape[1]), dtype="float32")
    for alpha in alphas:
        coef = _ridge(design, targets, alpha)
        error = np.mean((val_design @ coef - val_targets) ** 2, axis=0)
        better = error < best_error
        best_error[better] = error[better]
        best_coef[:, better] = coef[:, better]
    if not np.isfinite(best_error).all():
        raise ValueError("at least one ridge penalty is needed")
    return best_coef


def train_forecaster(
    features: Sequence[str],
    future_features: Sequence[str],
    target: str,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray, np.ndarray],
    config: TrainingConfig | None = None,
) -> Forecaster:
    """Fit the ridge base, then the LSTM on its residuals with early stopping on validation.

    `train` and `validation` are (past windows, covariates, targets). Deterministic for a given
    seed on CPU: seeds are fixed and op determinism is enabled.
    """
    import tensorflow as tf

    config = config or TrainingConfig()
    tf.keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(config.threads)
        tf.config.threading.set_inter_op_parallelism_threads(config.threads)
    except RuntimeError:  # threads can only be set before TensorFlow first runs
        pass
    started = time.perf_counter()
    train_x, train_f, train_y = train
    val_x, val_f, val_y = validation
    forecaster = Forecaster(
        list(features), list(future_features), target, config, Scaler.fit(train_x), np.zeros(0),
        float(np.nanstd(train_y) or 1.0), None,
    )
    sx, sf = forecaster.scaler.transform(train_x), forecaster.scale_future(train_f)
    vx, vf = forecaster.scaler.transform(val_x), forecaster.scale_future(val_f)
    train_design, val_design = forecaster.linear_design(sx, sf), forecaster.linear_design(vx, vf)
    train_off, val_off = forecaster.linear_offset(train_x), forecaster.linear_offset(val_x)
    forecaster.ridge_coef = _best_ridge(
        train_design, train_y - train_off, val_design, val_y - val_off, config.ridge_alphas
    )
    train_res = (train_y - train_design @ forecaster.ridge_coef - train_off) / forecaster.target_scale
    val_res = (val_y - val_design @ forecaster.ridge_coef - val_off) / forecaster.target_scale

    past_in = tf.keras.layers.Input((config.lookback, len(features)), name="past")
    inputs = [past_in]
    hidden = tf.keras.layers.LSTM(config.lstm_units)(past_in)
    if future_features:
        future_in = tf.keras.layers.Input((config.horizon * len(future_features),), name="future")
        inputs.append(future_in)
        hidden = tf.keras.layers.Concatenate()([hidden, future_in])
    hidden = tf.keras.layers.Dense(config.dense_units, activation="relu")(hidden)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(config.horizon)(hidden))
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate), loss="mse")
    fit = model.fit(
        forecaster.network_inputs(sx, sf),
        train_res.astype("float32"),
        validation_data=(forecaster.network_inputs(vx, vf), val_res.astype("float32")),
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[tf.keras.callbacks.EarlyStopping(patience=config.patience, restore_best_weights=True)],
    )
    forecaster.keras_model = model
    # Per horizon, only as much of the LSTM correction as helps on validation: at 1 h the ridge
    # model is often already as good as it gets, and a noisy correction would make it worse.
    correction = np.asarray(model.predict_on_batch(forecaster.network_inputs(vx, vf)), dtype="float64")
    wanted = np.asarray(val_res, dtype="float64")
    denominator = (correction**2).sum(axis=0)
    weights = np.divide((wanted * correction).sum(axis=0), denominator, out=np.zeros_like(denominator),
                        where=denominator > 0)
    forecaster.residual_weights = np.clip(weights, 0.0, 1.0)
    forecaster.history = {k: [float(x) for x in v] for k, v in fit.history.items()}
    forecaster.train_seconds = time.perf_counter() - started
    return forecaster
