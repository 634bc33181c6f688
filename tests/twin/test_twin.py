"""The twin trains a real TensorFlow model on real Beijing data, stores versions that can be
rolled back, forecasts reproducibly, and refuses what-if questions it cannot answer honestly."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twin.dataset import chronological_split, hourly_frame, make_windows
from twin.model import TrainingConfig
from twin.scenarios import FeatureChange, ScenarioError, what_if
from twin.sources import BEIJING_TZ, read_beijing_station
from twin.store import ModelNotFound, ModelStore
from twin.training import TrainedStation, latest_window, prepare, train_station

STATION_FILE = Path(__file__).resolve().parents[2] / "examples/beijing/PRSA_Data_Aotizhongxin_20130301-20170228.csv"
# 120 days of real hourly data and a deliberately small model: seconds, not minutes, to train.
SMALL = TrainingConfig(lookback=24, linear_hours=12, lstm_units=8, dense_units=8, epochs=2, batch_size=128)


@pytest.fixture(scope="module")
def observations() -> pd.DataFrame:
    return read_beijing_station(STATION_FILE, nrows=24 * 120)


@pytest.fixture(scope="module")
def trained(observations: pd.DataFrame) -> tuple[TrainedStation, ModelStore]:
    store = ModelStore(Path(tempfile.mkdtemp(prefix="twin-store-")))
    return train_station(observations, "Aotizhongxin", config=SMALL, store=store, local_tz=BEIJING_TZ), store


def test_short_gaps_are_interpolated_and_long_gaps_stay_missing() -> None:
    index = pd.date_range("2016-01-01", periods=12, freq="1h", tz="UTC")
    values = [1.0, 2.0, None, None, 5.0, 6.0, None, None, None, None, None, 12.0]
    frame = hourly_frame(pd.DataFrame({"pm25": values}, index=index), max_gap_hours=3)
    assert frame["pm25"].iloc[2:4].tolist() == [3.0, 4.0]
    assert frame["pm25"].iloc[6:11].isna().all()  # five missing hours are not made up


def test_windows_never_cross_a_long_gap() -> None:
    index = pd.date_range("2016-01-01", periods=40, freq="1h", tz="UTC")
    pm = np.arange(40, dtype=float)
    pm[20] = np.nan
    frame = pd.DataFrame({"pm25": pm}, index=index)
    windows = make_windows(frame, ["pm25"], "pm25", lookback=4, horizon=2)
    assert len(windows.origins) > 0
    for origin in windows.origins:
        hour = int((origin - index[0]) / pd.Timedelta(hours=1))
        assert not hour - 3 <= 20 <= hour + 2, f"window at hour {hour} touches the missing hour"


def test_split_is_chronological(observations: pd.DataFrame) -> None:
    split = chronological_split(hourly_frame(observations))
    assert split.train.index.max() < split.validation.index.min() < split.test.index.min()
    assert len(split.test) == pytest.approx(0.2 * len(observations), abs=2)


def test_training_reports_model_and_baselines_per_horizon(trained: tuple[TrainedStation, ModelStore]) -> None:
    station, _ = trained
    report = station.report
    assert report.samples > 100
    for series in (report.model_rmse, report.persistence_rmse, report.ar_rmse):
        assert len(series) == 24 and all(np.isfinite(series)) and all(v > 0 for v in series)
    # Error grows with the horizon for the persistence baseline on real PM2.5 data.
    assert report.persistence_rmse[23] > report.persistence_rmse[0]
    assert all(lo <= hi for lo, hi in zip(report.residual_q10, report.residual_q90, strict=True))


def test_store_versions_roll_back_and_reload_identically(
    observations: pd.DataFrame, trained: tuple[TrainedStation, ModelStore]
) -> None:
    first, store = trained
    assert first.version == "Aotizhongxin/pm25/v1"
    second = train_station(observations, "Aotizhongxin", config=SMALL, store=store, local_tz=BEIJING_TZ)
    assert second.version == "Aotizhongxin/pm25/v2"
    assert store.active_version("Aotizhongxin", "pm25") == "Aotizhongxin/pm25/v2"
    listed = {info.version: info for info in store.list()}
    assert listed["Aotizhongxin/pm25/v2"].active and not listed["Aotizhongxin/pm25/v1"].active
    assert listed["Aotizhongxin/pm25/v1"].metadata["metrics"]["samples"] == first.report.samples

    assert store.rollback("Aotizhongxin", "pm25") == "Aotizhongxin/pm25/v1"
    with pytest.raises(ModelNotFound):
        store.rollback("Aotizhongxin", "pm25")

    # Same seed, same data: training is reproducible, and a reloaded model forecasts the same.
    data = prepare(observations, "pm25", SMALL, local_tz=BEIJING_TZ)
    x, f = data.test.inputs[:5], data.test.future[:5]
    np.testing.assert_allclose(first.forecaster.predict(x, f), second.forecaster.predict(x, f), rtol=1e-5)
    reloaded = store.load("Aotizhongxin/pm25/v1")
    np.testing.assert_allclose(reloaded.predict(x, f), first.forecaster.predict(x, f), rtol=1e-5)


def test_latest_window_uses_yesterdays_weather_without_a_forecast(
    observations: pd.DataFrame, trained: tuple[TrainedStation, ModelStore]
) -> None:
    station, _ = trained
    frame = prepare(observations, "pm25", SMALL, local_tz=BEIJING_TZ).frame
    window, future, origin = latest_window(frame, station.forecaster)
    assert window.shape == (24, len(station.forecaster.features))
    assert future.shape == (24, len(station.forecaster.future_features))
    yesterday = frame.loc[origin - pd.Timedelta(hours=23), "temperature"]
    assert future[0, station.forecaster.future_features.index("temperature")] == pytest.approx(yesterday)


def _scenario_inputs(observations: pd.DataFrame, station: TrainedStation) -> tuple[np.ndarray, np.ndarray]:
    data = prepare(observations, "pm25", SMALL, local_tz=BEIJING_TZ)
    return data.test.inputs[-1], data.test.future[-1]


def test_what_if_changes_the_forecast_and_reports_deltas(
    observations: pd.DataFrame, trained: tuple[TrainedStation, ModelStore]
) -> None:
    station, _ = trained
    window, future = _scenario_inputs(observations, station)
    result = what_if(
        station.forecaster, window, future,
        [FeatureChange("pm25", "scale", 0.5, -23, 0), FeatureChange("windSpeed", "scale", 1.2, 1, 24)],
        station.bounds, station.report.residual_q10, station.report.residual_q90,
    )
    assert result.baseline.shape == result.scenario.shape == (24,)
    assert not np.allclose(result.baseline, result.scenario)
    assert (result.band_low <= result.scenario + 1e-9).all() and (result.scenario <= result.band_high + 1e-9).all()
    deltas = result.deltas()
    assert deltas["mean"] == pytest.approx(result.scenario_summary.mean - result.baseline_summary.mean, abs=0.01)
    assert set(deltas) == {"mean", "max", "hoursAboveEU", "hoursAboveWHO", "eeaBandChanges"}


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (FeatureChange("traffic", "scale", 0.8, -10, 0), "does not use 'traffic'"),
        (FeatureChange("no2", "scale", 0.8, 1, 24), "only observed, not forecast"),
        (FeatureChange("no2", "scale", 0.8, -100, 0), "outside what the model looks at"),
        (FeatureChange("temperature", "add", 60.0, 1, 24), "outside the range the model was trained on"),
        (FeatureChange("no2", "scale", 0.8, 0, -5), "after end hour"),
    ],
)
def test_what_if_refuses_what_it_cannot_answer(
    observations: pd.DataFrame, trained: tuple[TrainedStation, ModelStore], change: FeatureChange, complaint: str
) -> None:
    station, _ = trained
    window, future = _scenario_inputs(observations, station)
    with pytest.raises(ScenarioError, match=complaint):
        what_if(station.forecaster, window, future, [change], station.bounds,
                station.report.residual_q10, station.report.residual_q90)


def test_a_station_without_weather_forecast_gets_an_observation_only_model(
    observations: pd.DataFrame, trained: tuple[TrainedStation, ModelStore]
) -> None:
    _, store = trained
    observed = train_station(
        observations, "Aotizhongxin", config=SMALL, store=store, local_tz=BEIJING_TZ, weather_forecast=False
    )
    assert observed.version == "Aotizhongxin/pm25@observed/v1"
    assert observed.forecaster.future_features == []
    frame = prepare(observations, "pm25", SMALL, local_tz=BEIJING_TZ).frame
    window, future, _ = latest_window(frame, store.load(observed.version))
    assert future.shape == (24, 0)
    assert store.load(observed.version).predict(window[None], future[None]).shape == (1, 24)
    # Scenarios about the weather ahead need a model that takes the weather ahead.
    with pytest.raises(ScenarioError, match="only observed, not forecast"):
        what_if(observed.forecaster, window, future, [FeatureChange("windSpeed", "scale", 0.5, 1, 24)],
                observed.bounds, observed.report.residual_q10, observed.report.residual_q90)
