"""Training one station's twin end to end: features, chronological split, windows, model,
evaluation against persistence and AR(24) on the same test windows, and the model store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from twin.dataset import Windows, add_features, chronological_split, hourly_frame, make_windows
from twin.evaluation import AutoRegression, EvaluationReport, evaluate
from twin.model import Forecaster, TrainingConfig, train_forecaster
from twin.scenarios import TrainingRange
from twin.store import ModelStore

# Weather that a forecast provides for the hours ahead (the model's covariates).
FORECAST_WEATHER: tuple[str, ...] = (
    "temperature", "atmosphericPressure", "dewPoint", "precipitation", "windSpeed", "wind_u", "wind_v",
)


@dataclass
class TrainedStation:
    """A trained model, its evaluation and where the store put it."""

    forecaster: Forecaster
    report: EvaluationReport
    bounds: TrainingRange
    version: str | None
    data_window: dict[str, Any]


@dataclass
class PreparedData:
    """Windows of the three chronological parts and the feature lists behind them."""

    features: list[str]
    future_features: list[str]
    train: Windows
    validation: Windows
    test: Windows
    frame: pd.DataFrame


def prepare(
    observations: pd.DataFrame,
    target: str,
    config: TrainingConfig,
    *,
    local_tz: str | None = None,
    covariate_shift_hours: int = 0,
    weather_forecast: bool = True,
) -> PreparedData:
    """Hourly frame, features and windows from raw observations (UTC index, SDM column names).

    `covariate_shift_hours` > 0 replaces the weather over the horizon by the weather observed that
    many hours earlier (24 = "tomorrow like today"), for evaluating without a weather forecast.
    `weather_forecast=False` prepares windows without covariates, for the observation-only model.
    """
    if target not in observations:
        raise ValueError(f"the history has no {target!r} values")
    frame = add_features(hourly_frame(observations), local_tz=local_tz)
    features = list(frame.columns)
    future_features = [f for f in FORECAST_WEATHER if f in features] if weather_forecast else []
    split = chronological_split(frame)

    def windows(part: pd.DataFrame) -> Windows:
        future_frame = part.shift(covariate_shift_hours) if covariate_shift_hours else None
        return make_windows(
            part, features, target, lookback=config.lookback, horizon=config.horizon,
            future_features=future_features, future_frame=future_frame,
        )

    return PreparedData(
        features, future_features, windows(split.train), windows(split.validation), windows(split.test), frame
    )


def evaluate_on(forecaster: Forecaster, data: PreparedData, ar: AutoRegression, test: Windows) -> EvaluationReport:
    target_index = data.features.index(forecaster.target)
    predictions = forecaster.predict(test.inputs, test.future)
    return evaluate(predictions, test.inputs, test.targets, target_index, ar)


def train_station(
    observations: pd.DataFrame,
    station: str,
    *,
    target: str = "pm25",
    config: TrainingConfig | None = None,
    store: ModelStore | None = None,
    local_tz: str | None = None,
    source: Sequence[str] = (),
    weather_forecast: bool = True,
) -> TrainedStation:
    """Train, evaluate against the baselines and (with a store) save a new model version.

    `weather_forecast=True` trains the model that takes the weather over the horizon as input
    (series `<target>`); False the one that uses observations only (series `<target>@observed`),
    for stations without a weather forecast.
    """
    config = config or TrainingConfig()
    data = prepare(observations, target, config, local_tz=local_tz, weather_forecast=weather_forecast)
    if min(len(data.train.targets), len(data.validation.targets), len(data.test.targets)) == 0:
        raise ValueError(
            f"{station}: not enough complete {config.lookback + config.horizon}-hour windows to train and test"
        )
    forecaster = train_forecaster(
        data.features, data.future_features, target,
        (data.train.inputs, data.train.future, data.train.targets),
        (data.validation.inputs, data.validation.future, data.validation.targets),
        config,
    )
    target_index = data.features.index(target)
    ar = AutoRegression.fit(data.train.inputs, data.train.targets, target_index)
    report = evaluate_on(forecaster, data, ar, data.test)
    bounds = TrainingRange.of(data.features, data.train.inputs)
    index = data.frame.index
    data_window = {
        "start": index[0].isoformat(), "end": index[-1].isoformat(),
        "testStart": data.test.origins[0].isoformat() if len(data.test.origins) else None,
        "trainWindows": len(data.train.targets), "testWindows": len(data.test.targets),
        "sourceEntities": list(source),
    }
    version = None
    if store is not None:
        version = store.save(
            station, forecaster,
            {"dataWindow": data_window, "metrics": report.to_json(), "trainingRange": bounds.to_json(),
             "localTimeZone": local_tz},
        )
    return TrainedStation(forecaster, report, bounds, version, data_window)


def latest_window(
    frame: pd.DataFrame, forecaster: Forecaster, forecast: pd.DataFrame | None = None
) -> tuple[np.ndarray, np.ndarray, pd.Timestamp]:
    """The newest complete input window of an hourly feature frame (its origin may lie before the
    frame's end when the last hours are incomplete) and the covariates for the hours after it:
    from `forecast` (a weather forecast on an hourly UTC index) where given, else the weather of
    the same hours one day earlier."""
    lookback, horizon = forecaster.config.lookback, forecaster.config.horizon
    complete_rows = frame[forecaster.features].notna().all(axis=1).astype("int32")
    full_windows = complete_rows.rolling(lookback).sum() == lookback
    if not full_windows.any():
        raise ValueError(f"no {lookback} consecutive complete hours of observations to forecast from")
    origin = full_windows[full_windows].index[-1]
    past = frame.loc[:origin].iloc[-lookback:]
    hours = pd.date_range(origin + pd.Timedelta(hours=1), periods=horizon, freq="1h")
    if not forecaster.future_features:
        return past[forecaster.features].to_numpy(dtype="float32"), np.empty((horizon, 0), "float32"), origin
    if forecast is not None and not forecast.empty:
        ahead = forecast.reindex(hours)[forecaster.future_features]
    else:
        ahead = frame[forecaster.future_features].reindex(hours - pd.Timedelta(hours=24))
    ahead = ahead.interpolate(limit_direction="both")
    if ahead.isna().to_numpy().any():
        raise ValueError("no weather for the hours ahead (neither a forecast nor yesterday's observations)")
    return (
        past[forecaster.features].to_numpy(dtype="float32"),
        ahead.to_numpy(dtype="float32"),
        origin,
    )
