"""Versioned model store: each trained model is a folder of weights and one JSON artefact
(features, scalers, ridge base, data window, metrics, training time); one version per station
and target is active and can be rolled back."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from twin.model import Forecaster, Scaler, TrainingConfig

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ModelInfo:
    """What the store knows about one model version without loading its weights."""

    version: str
    station: str
    target: str
    created_at: str
    active: bool
    metadata: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "station": self.station,
            "target": self.target,
            "createdAt": self.created_at,
            "active": self.active,
            **self.metadata,
        }


class ModelNotFound(LookupError):
    """No model version (or no active one) matches."""


class ModelStore:
    """Models under `root/<station>/<series>/<version>/`, with `active` pointer files; the series
    is the target (`pm25`), or `pm25@observed` for the model that needs no weather forecast."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _series_dir(self, station: str, target: str) -> Path:
        return self.root / _SAFE.sub("_", station) / _SAFE.sub("_", target)

    def save(self, station: str, forecaster: Forecaster, metadata: dict[str, Any], *, activate: bool = True) -> str:
        """Store a trained model as a new version and (by default) make it the active one."""
        series = self._series_dir(station, forecaster.series)
        series.mkdir(parents=True, exist_ok=True)
        existing = [int(p.name[1:]) for p in series.glob("v*") if p.name[1:].isdigit()]
        number = max(existing, default=0) + 1
        version_dir = series / f"v{number}"
        tmp = series / f".v{number}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        forecaster.keras_model.save(tmp / "lstm.keras")
        artefact = {
            "station": station,
            "target": forecaster.target,
            "series": forecaster.series,
            "features": forecaster.features,
            "futureFeatures": forecaster.future_features,
            "config": forecaster.config.to_json(),
            "scaler": forecaster.scaler.to_json(),
            "ridgeCoef": forecaster.ridge_coef.tolist(),
            "linearBase": forecaster.linear_base,
            "targetScale": forecaster.target_scale,
            "residualWeights": None if forecaster.residual_weights is None else forecaster.residual_weights.tolist(),
            "trainSeconds": round(forecaster.train_seconds, 2),
            "history": forecaster.history,
            "createdAt": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            **metadata,
        }
        (tmp / "artefact.json").write_text(json.dumps(artefact, indent=1))
        tmp.rename(version_dir)  # a version appears whole or not at all
        version = f"{station}/{forecaster.series}/v{number}"
        if activate:
            self.activate(version)
        return version

    def _parse(self, version: str) -> tuple[str, str, Path]:
        try:
            station, target, number = version.split("/")
        except ValueError:
            raise ModelNotFound(f"model versions look like <station>/<target>/v<n>, not {version!r}") from None
        path = self._series_dir(station, target) / number
        if not (path / "artefact.json").is_file():
            raise ModelNotFound(f"no model version {version}")
        return station, target, path

    def activate(self, version: str) -> None:
        """Make `version` the one forecasts use (also the way to roll back)."""
        station, target, _ = self._parse(version)
        pointer = self._series_dir(station, target) / "active"
        pointer.with_suffix(".tmp").write_text(version)
        pointer.with_suffix(".tmp").replace(pointer)

    def active_version(self, station: str, target: str) -> str:
        pointer = self._series_dir(station, target) / "active"
        if not pointer.is_file():
            raise ModelNotFound(f"no trained model for {station} / {target}")
        return pointer.read_text().strip()

    def rollback(self, station: str, target: str) -> str:
        """Activate the version before the active one; returns it."""
        current = int(self.active_version(station, target).rsplit("/v", 1)[1])
        older = sorted(
            int(p.name[1:]) for p in self._series_dir(station, target).glob("v*")
            if p.name[1:].isdigit() and int(p.name[1:]) < current
        )
        if not older:
            raise ModelNotFound(f"{station} / {target} has no version before v{current}")
        version = f"{station}/{target}/v{older[-1]}"
        self.activate(version)
        return version

    def list(self) -> list[ModelInfo]:
        infos: list[ModelInfo] = []
        for artefact_path in sorted(self.root.glob("*/*/v*/artefact.json")):
            artefact = json.loads(artefact_path.read_text())
            station, target = artefact["station"], artefact.get("series", artefact["target"])
            version = f"{station}/{target}/{artefact_path.parent.name}"
            try:
                active = self.active_version(station, target) == version
            except ModelNotFound:
                active = False
            keys = ("features", "futureFeatures", "dataWindow", "metrics", "trainSeconds")
            metadata = {k: artefact[k] for k in keys if k in artefact}
            infos.append(ModelInfo(version, station, target, artefact["createdAt"], active, metadata))
        return infos

    def artefact(self, version: str) -> dict[str, Any]:
        _, _, path = self._parse(version)
        data: dict[str, Any] = json.loads((path / "artefact.json").read_text())
        return data

    def load(self, version: str) -> Forecaster:
        """Load a stored model ready to forecast."""
        import tensorflow as tf

        _, _, path = self._parse(version)
        artefact = json.loads((path / "artefact.json").read_text())
        keras_model = tf.keras.models.load_model(path / "lstm.keras", compile=False)
        return Forecaster(
            features=artefact["features"],
            future_features=artefact["futureFeatures"],
            target=artefact["target"],
            config=TrainingConfig(**artefact["config"]),
            scaler=Scaler.from_json(artefact["scaler"]),
            ridge_coef=np.asarray(artefact["ridgeCoef"], dtype="float32"),
            target_scale=float(artefact["targetScale"]),
            keras_model=keras_model,
            residual_weights=(
                None if artefact.get("residualWeights") is None else np.asarray(artefact["residualWeights"])
            ),
            history=artefact.get("history", {}),
            train_seconds=float(artefact.get("trainSeconds", 0.0)),
            linear_base=artefact.get("linearBase", "level"),  # artefacts from before the change-based base
        )
