"""Twin accuracy and speed on the Beijing multi-site data: per station, the last 20 % as test set.

`python -m bench.twin --data DIR` (DIR: the folder of the 12 `PRSA_Data_<station>_*.csv` files)
trains one model per station, scores it against persistence and a linear AR(24) on the same
test windows for every horizon, prints a table, and ends with one JSON line.

Two settings are reported, because the model takes the weather over the horizon as input:
- `*_ratio_*` (the headline): the observed weather stands in for a perfect weather forecast
  ("perfect prognosis"), an upper bound of operational accuracy;
- `noforecast_*`: the observation-only model (series `pm25@observed`) the twin uses for a
  station without a weather forecast.
Ratios are model RMSE / persistence RMSE on the same windows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from twin.model import TrainingConfig
from twin.scenarios import FeatureChange, what_if
from twin.sources import BEIJING_TZ, read_beijing_station
from twin.store import ModelStore
from twin.training import prepare, train_station


def read_csv_observations(path: Path, time_column: str) -> pd.DataFrame:
    """Any hourly CSV as observations: a time column, numeric columns kept, UTC index."""
    raw = pd.read_csv(path)
    if time_column not in raw:
        raise SystemExit(f"{path} has no column {time_column!r}")
    times = pd.to_datetime(raw.pop(time_column), utc=True)
    numeric = raw.apply(pd.to_numeric, errors="coerce").dropna(axis=1, how="all")
    return numeric.set_index(pd.DatetimeIndex(times))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="folder of the PRSA_Data_<station>_*.csv files")
    source.add_argument("--csv", type=Path, help="any hourly CSV: numeric columns are features")
    parser.add_argument("--target", default="pm25", help="target column (with --csv)")
    parser.add_argument("--time", default="time", help="time column (with --csv; naive times are UTC)")
    parser.add_argument("--stations", nargs="*", help="only these stations (default: all files)")
    parser.add_argument("--epochs", type=int, default=TrainingConfig.epochs)
    args = parser.parse_args()

    if args.csv:
        inputs = [(args.csv.stem, read_csv_observations(args.csv, args.time))]
        target, local_tz = args.target, None
    else:
        files = sorted(args.data.glob("PRSA_Data_*_*.csv"))
        if args.stations:
            files = [f for f in files if f.name.split("_")[2] in args.stations]
        if not files:
            raise SystemExit(f"no PRSA_Data_<station>_*.csv files in {args.data}")
        inputs = [(f.name.split("_")[2], read_beijing_station(f)) for f in files]
        target, local_tz = "pm25", BEIJING_TZ
    config = TrainingConfig(epochs=args.epochs)
    rows: list[dict[str, object]] = []
    forecast_ms: list[float] = []
    whatif_ms: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp))
        for station, observations in inputs:
            trained = train_station(observations, station, target=target, config=config, store=store,
                                    local_tz=local_tz)
            report = trained.report
            # Without a weather forecast the twin uses its observation-only model.
            observed = train_station(
                observations, station, target=target, config=config, store=store, local_tz=local_tz,
                weather_forecast=False,
            ).report
            # Speed of a stored model: load once, then time single forecasts and what-ifs.
            assert trained.version is not None
            model = store.load(trained.version)
            data = prepare(observations, target, config, local_tz=local_tz)
            window, future = data.test.inputs[-1], data.test.future[-1]
            model.predict(window[None], future[None])
            for _ in range(20):
                started = time.perf_counter()
                model.predict(window[None], future[None])
                forecast_ms.append((time.perf_counter() - started) * 1000)
            changes = [FeatureChange(target, "scale", 0.9, -(config.lookback - 1), 0)]
            if "windSpeed" in model.future_features:
                changes.append(FeatureChange("windSpeed", "scale", 0.9, 1, 24))
            for _ in range(10):
                started = time.perf_counter()
                what_if(model, window, future, changes, trained.bounds, report.residual_q10, report.residual_q90)
                whatif_ms.append((time.perf_counter() - started) * 1000)
            row = {
                "station": station,
                "train_s": round(trained.forecaster.train_seconds, 1),
                "rmse_1h": report.model_rmse[0], "persistence_1h": report.persistence_rmse[0],
                "ar_1h": report.ar_rmse[0],
                "rmse_24h": report.model_rmse[23], "persistence_24h": report.persistence_rmse[23],
                "ar_24h": report.ar_rmse[23],
                "ratio_1h": round(report.ratio_to_persistence(1), 3),
                "ratio_24h": round(report.ratio_to_persistence(24), 3),
                "noforecast_ratio_1h": round(observed.ratio_to_persistence(1), 3),
                "noforecast_ratio_24h": round(observed.ratio_to_persistence(24), 3),
                "test_windows": report.samples,
                "per_horizon_rmse": report.model_rmse,
                "per_horizon_persistence": report.persistence_rmse,
            }
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.startswith("per_horizon")}), flush=True)

    def median_of(key: str) -> float:
        return round(statistics.median(float(str(r[key])) for r in rows), 3)

    result = {
        "stations": len(rows),
        "stations_24h_ratio_le_080": sum(1 for r in rows if float(str(r["ratio_24h"])) <= 0.80),
        "rmse_24h_ratio_median": median_of("ratio_24h"),
        "rmse_1h_ratio_median": median_of("ratio_1h"),
        "noforecast_24h_ratio_median": median_of("noforecast_ratio_24h"),
        "noforecast_1h_ratio_median": median_of("noforecast_ratio_1h"),
        "train_seconds_median": median_of("train_s"),
        "train_peak_rss_mb": round(peak_rss_mb(), 1),
        "forecast_ms": round(float(np.median(forecast_ms)), 2),
        "whatif_ms": round(float(np.median(whatif_ms)), 2),
        "machine": {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
