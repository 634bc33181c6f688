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

`whatif_ms` is a `POST /twin/what-if` over HTTP, as planners call it: the first station's model
in the platform API (a subprocess), answering from the station's newest window that the API reads
from a broker (a subprocess on an embedded PostgreSQL) holding the station's last week, ingested
with the shipped Beijing mapping. `whatif_inprocess_ms` is the model work alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from bench._harness import REPO, log, percentile, running_broker, wait_for_health
from broker.embedded_postgres import free_port
from twin.model import TrainingConfig
from twin.scenarios import FeatureChange, what_if
from twin.sources import BEIJING_TZ, read_beijing_station
from twin.store import ModelStore
from twin.training import TrainedStation, prepare, train_station

WEEK_HOURS = 7 * 24
WHAT_IF_CALLS = 20


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


@contextmanager
def running_api(broker_url: str, data_dir: Path) -> Iterator[str]:
    """The platform API (`climaborough api`) on a free loopback port, reading models from `data_dir`."""
    port = free_port()
    env = {**os.environ, "CLIMABOROUGH_BROKER_URL": broker_url, "CLIMABOROUGH_AUTH": "off", "PYTHONUNBUFFERED": "1"}
    log_path = data_dir / "api.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port", str(port),
             "--data-dir", str(data_dir)],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, log_path)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def http_what_if_ms(station_file: Path, station: str, trained: TrainedStation) -> list[float]:
    """Milliseconds of POST /twin/what-if against the API and a broker holding the station's last week."""
    entity_id = f"urn:ngsi-ld:AirQualityObserved:beijing:{station}"
    with running_broker() as broker, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lines = station_file.read_text(encoding="utf-8").splitlines(keepends=True)
        week = folder / f"{station}_last_week.csv"
        week.write_text(lines[0] + "".join(lines[-WEEK_HOURS:]), encoding="utf-8")
        log(f"ingesting the last {WEEK_HOURS} hours of {station} into {broker.base_url}")
        subprocess.run(
            [sys.executable, "-m", "cli.main", "ingest", str(week), "--mapping", "beijing_multisite",
             "--broker-url", broker.base_url, "--data-dir", str(folder / "ingest")],
            cwd=REPO, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        store = ModelStore(folder / "api" / "models")
        store.save(entity_id, trained.forecaster, {
            "dataWindow": trained.data_window, "metrics": trained.report.to_json(),
            "trainingRange": trained.bounds.to_json(), "localTimeZone": BEIJING_TZ,
        })  # fmt: skip
        question = {"station": entity_id, "horizon": 24, "scenario": [
            {"feature": "no2", "operation": "scale", "value": 0.8, "from": -23, "until": 0},
            {"feature": "windSpeed", "operation": "scale", "value": 0.9, "from": 1, "until": 24},
        ]}  # fmt: skip
        timings: list[float] = []
        with (
            running_api(broker.base_url, folder / "api") as api_url,
            httpx.Client(base_url=api_url, timeout=60) as client,
        ):
            for call in range(WHAT_IF_CALLS + 1):
                started = time.perf_counter()
                response = client.post("/twin/what-if", json=question)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise SystemExit(f"POST /twin/what-if: {response.status_code} {response.text}")
                if call:  # the first call loads the model
                    timings.append(elapsed)
        return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="folder of the PRSA_Data_<station>_*.csv files")
    source.add_argument("--csv", type=Path, help="any hourly CSV: numeric columns are features")
    parser.add_argument("--target", default="pm25", help="target column (with --csv)")
    parser.add_argument("--time", default="time", help="time column (with --csv; naive times are UTC)")
    parser.add_argument("--stations", nargs="*", help="only these stations (default: all files)")
    parser.add_argument("--epochs", type=int, default=TrainingConfig.epochs)
    parser.add_argument("--no-http", action="store_true", help="skip the what-if over HTTP (broker + API)")
    args = parser.parse_args()

    if args.csv:
        inputs = [(args.csv.stem, read_csv_observations(args.csv, args.time))]
        station_files: dict[str, Path] = {}
        target, local_tz = args.target, None
    else:
        files = sorted(args.data.glob("PRSA_Data_*_*.csv"))
        if args.stations:
            files = [f for f in files if f.name.split("_")[2] in args.stations]
        if not files:
            raise SystemExit(f"no PRSA_Data_<station>_*.csv files in {args.data}")
        inputs = [(f.name.split("_")[2], read_beijing_station(f)) for f in files]
        station_files = {f.name.split("_")[2]: f for f in files}
        target, local_tz = "pm25", BEIJING_TZ
    config = TrainingConfig(epochs=args.epochs)
    rows: list[dict[str, object]] = []
    forecast_ms: list[float] = []
    whatif_ms: list[float] = []
    first_trained: tuple[str, TrainedStation] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp))
        for station, observations in inputs:
            trained = train_station(observations, station, target=target, config=config, store=store,
                                    local_tz=local_tz)
            report = trained.report
            if first_trained is None and station in station_files:
                first_trained = (station, trained)
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

    result: dict[str, object] = {
        "stations": len(rows),
        "stations_24h_ratio_le_080": sum(1 for r in rows if float(str(r["ratio_24h"])) <= 0.80),
        "rmse_24h_ratio_median": median_of("ratio_24h"),
        "rmse_1h_ratio_median": median_of("ratio_1h"),
        "noforecast_24h_ratio_median": median_of("noforecast_ratio_24h"),
        "noforecast_1h_ratio_median": median_of("noforecast_ratio_1h"),
        "train_seconds_median": median_of("train_s"),
        "train_peak_rss_mb": round(peak_rss_mb(), 1),
        "forecast_ms": round(float(np.median(forecast_ms)), 2),
        "whatif_ms": None,
        "whatif_p95_ms": None,
        "whatif_inprocess_ms": round(float(np.median(whatif_ms)), 2),
        "machine": {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine()},
    }
    if first_trained is not None and not args.no_http:
        station, trained = first_trained
        timings = http_what_if_ms(station_files[station], station, trained)
        result["whatif_ms"] = round(statistics.median(timings), 1)
        result["whatif_p95_ms"] = round(percentile(timings, 0.95), 1)
        result["whatif_station"] = station
    print(json.dumps(result))


if __name__ == "__main__":
    main()
