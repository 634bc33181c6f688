"""Twin rules behind the REST API: answer a what-if question from a station's newest window, list
models, read the forecast the broker holds. Model work runs in a thread, never on the event loop."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from ngsi.errors import BadRequestData, ResourceNotFound
from smart_data_models import format_timestamp
from twin.scenarios import FeatureChange, Operation, ScenarioError, WhatIfResult, summarize, what_if
from twin.service import UNIT_CODES, ActiveModel, ActiveModels, ForecastInputs, StationReader, read_forecast
from twin.store import ModelNotFound, ModelStore


@dataclass(frozen=True)
class ChangeRequest:
    """One feature change as asked: hours relative to the origin (int) or moments (datetime); None
    means the whole span the feature applies to."""

    feature: str
    operation: Operation
    value: float
    start: int | datetime | None = None
    end: int | datetime | None = None


@dataclass(frozen=True)
class WhatIfQuestion:
    station: str
    changes: Sequence[ChangeRequest]
    horizon: int = 24
    target: str | None = None
    origin: datetime | None = None
    """Forecast from the newest window at or before this moment (default: the newest observation)."""


def _relative_hour(moment: int | datetime, origin: pd.Timestamp, which: str, feature: str) -> int:
    if isinstance(moment, int):
        return moment
    stamp = pd.Timestamp(moment)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    hours = (stamp - origin) / pd.Timedelta(hours=1)
    if not math.isclose(hours, round(hours), abs_tol=1e-9):
        raise BadRequestData(
            f"{feature}: {which} {format_timestamp(stamp.to_pydatetime())} is not on the hour of the forecast "
            f"grid (origin {format_timestamp(origin.to_pydatetime())})", parameter=which,
        )  # fmt: skip
    return round(hours)


def feature_changes(
    model: ActiveModel, origin: pd.Timestamp, horizon: int, asked: Sequence[ChangeRequest]
) -> list[FeatureChange]:
    """Changes on hours relative to the origin; an open start or end covers what the model sees of the
    feature (the observed window, and the hours ahead for a forecast covariate)."""
    lookback = model.forecaster.config.lookback
    changes = []
    for change in asked:
        ahead = change.feature in model.forecaster.future_features
        name = change.feature
        start = -(lookback - 1) if change.start is None else _relative_hour(change.start, origin, "from", name)
        end = (horizon if ahead else 0) if change.end is None else _relative_hour(change.end, origin, "until", name)
        changes.append(FeatureChange(change.feature, change.operation, change.value, start, end))
    return changes


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in values]


def _truncated(result: WhatIfResult, target: str, horizon: int) -> WhatIfResult:
    """The result over the first `horizon` hours (its summaries and deltas over them too)."""
    baseline, scenario = result.baseline[:horizon], result.scenario[:horizon]
    return WhatIfResult(
        baseline, scenario, result.band_low[:horizon], result.band_high[:horizon],
        summarize(target, baseline), summarize(target, scenario),
    )  # fmt: skip


class TwinApi:
    """What the twin routes call."""

    def __init__(self, store: ModelStore, reader: StationReader, default_target: str) -> None:
        self.models = ActiveModels(store)
        self.reader = reader
        self.default_target = default_target

    async def model(self, station: str, target: str | None) -> ActiveModel:
        try:
            return await asyncio.to_thread(self.models.get, station, target or self.default_target)
        except ModelNotFound as error:
            raise ResourceNotFound(str(error), station=station) from None

    def list_models(self) -> list[dict[str, Any]]:
        return [info.to_json() for info in self.models.store.list()]

    async def what_if(self, question: WhatIfQuestion) -> dict[str, Any]:
        model = await self.model(question.station, question.target)
        horizon = model.forecaster.config.horizon
        if question.horizon > horizon:
            raise BadRequestData(f"horizon {question.horizon} h is beyond the model's {horizon} h", parameter="horizon")
        inputs: ForecastInputs = await self.reader.inputs(model, question.origin)
        changes = feature_changes(model, inputs.origin, question.horizon, question.changes)
        try:
            full = await asyncio.to_thread(
                what_if, model.forecaster, inputs.window, inputs.future, changes, model.bounds,
                model.residual_q10, model.residual_q90,
            )  # fmt: skip
        except ScenarioError as error:
            raise BadRequestData(str(error), title="Scenario not answerable", station=model.station) from None
        result = _truncated(full, model.target, question.horizon)
        hours = pd.date_range(inputs.origin + pd.Timedelta(hours=1), periods=question.horizon, freq="1h")
        return {
            "station": model.station,
            "target": model.target,
            "modelVersion": model.version,
            "origin": format_timestamp(inputs.origin.to_pydatetime()),
            "horizon": question.horizon,
            "covariates": inputs.covariates,
            "unitCode": UNIT_CODES.get(model.target, "GQ"),
            "changes": [
                {"feature": c.feature, "operation": c.operation, "value": c.value, "from": c.start_hour,
                 "until": c.end_hour}
                for c in changes
            ],
            "hours": [format_timestamp(h.to_pydatetime()) for h in hours],
            "baseline": _rounded(result.baseline),
            "scenario": _rounded(result.scenario),
            "band": {"low": _rounded(result.band_low), "high": _rounded(result.band_high), "quantiles": [0.1, 0.9]},
            "baselineSummary": result.baseline_summary.to_json(),
            "scenarioSummary": result.scenario_summary.to_json(),
            "deltas": result.deltas(),
        }

    async def forecast(self, station: str, target: str | None) -> dict[str, Any]:
        target = target or self.default_target
        try:
            key = await asyncio.to_thread(self.models.resolve, station, target)
        except ModelNotFound:
            key = station  # a forecast may exist without a model here (another twin wrote it)
        return await read_forecast(self.reader, key, target)
