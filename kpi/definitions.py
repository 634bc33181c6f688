"""KPI definitions in YAML (`broker_config/kpis/*.yaml`), checked at load: a broken one names file, field and reason.

A file holds defaults for its KPIs (`city`, `organization`, `timezone`) and a list `kpis`; every
KPI may override a default. See docs/kpis.md for every field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from kpi.catalogue import Calculator, Parameters, find_calculator
from kpi.windows import CALCULATION_FREQUENCY, WINDOW_KINDS, WindowKind, parse_timezone
from smart_data_models import MODEL_TYPES

SHIPPED_DEFINITIONS = Path(__file__).resolve().parents[1] / "broker_config" / "kpis"
"""The definitions that ship with climaborough."""

SdmCategory = Literal[
    "actionable", "directional", "financial", "input", "lagging", "leading", "output", "practical",
    "process", "qualitative", "quantitative",
]  # fmt: skip
"""The `category` values the KeyPerformanceIndicator schema allows."""
Standing = Literal["veryGood", "good", "fair", "bad", "veryBad"]
"""The `currentStanding` values the KeyPerformanceIndicator schema allows."""
SdmFrequency = Literal["hourly", "daily", "weekly", "monthly", "yearly", "quarterly", "bimonthly", "biweekly"]

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StationSelector(_Strict):
    """Which entities of the source type a KPI is computed for (all of them by default)."""

    ids: tuple[str, ...] = ()
    id_pattern: str | None = None

    @field_validator("id_pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"not a regular expression: {error}") from None
        return pattern

    def matches(self, entity_id: str) -> bool:
        if self.ids and entity_id not in self.ids:
            return False
        return self.id_pattern is None or re.fullmatch(self.id_pattern, entity_id) is not None


class Source(_Strict):
    """The source entity type, the attributes the KPI reads and the station selector."""

    type: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    attributes: tuple[str, ...] = Field(min_length=1)
    stations: StationSelector = StationSelector()
    context: str | None = None
    """@context the source type and attributes are named in; default: the type's Smart Data Models context."""

    @property
    def ld_context(self) -> str | None:
        if self.context is not None:
            return self.context
        model = MODEL_TYPES.get(self.type)
        return model.subject_context if model else None


class WindowSpec(_Strict):
    """The calculation window; `custom` is a fixed period `[start, end)` with its own frequency."""

    kind: WindowKind
    start: datetime | date | None = None
    end: datetime | date | None = None
    frequency: SdmFrequency | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _custom_has_bounds(self) -> WindowSpec:
        if self.kind == "custom":
            if self.start is None or self.end is None:
                raise ValueError("a custom window needs `start` and `end`")
            if self.frequency is None:
                raise ValueError("a custom window needs `frequency` (how often it is calculated)")
        elif self.start is not None or self.end is not None:
            raise ValueError(f"only a custom window has `start`/`end`, not {self.kind!r}; kinds: {list(WINDOW_KINDS)}")
        return self


class Trigger(_Strict):
    """When the KPI is computed: on every change of its sources, on a schedule, or both."""

    # Not `on`: YAML 1.1 reads a bare `on` key as the boolean true.
    when: Literal["change", "schedule", "both"] = "change"
    every_s: float | None = Field(None, gt=0)
    """Schedule interval in seconds (required for `schedule` and `both`)."""
    min_interval_s: float = Field(0.0, ge=0)
    """On change: recompute one window at most this often (changes in between are coalesced)."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"when": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _schedule_has_interval(self) -> Trigger:
        if self.when in ("schedule", "both") and self.every_s is None:
            raise ValueError(f"trigger {self.when!r} needs `every_s`")
        return self

    @property
    def on_change(self) -> bool:
        return self.when in ("change", "both")

    @property
    def on_schedule(self) -> bool:
        return self.when in ("schedule", "both")


class Threshold(_Strict):
    """`currentStanding` for values up to `up_to` (inclusive); the last band may leave `up_to` out."""

    up_to: float | None = None
    standing: Standing


class KpiDefinition(_Strict):
    """One KPI: what it measures, from which data, with which calculator, over which window."""

    id: str
    version: int | str = 1
    name: str = Field(min_length=1)
    description: str = ""
    category: tuple[SdmCategory, ...] = Field(("quantitative",), min_length=1)
    theme: str | None = None
    process: str | None = None
    city: str = Field(min_length=1)
    organization: str = Field(min_length=1)
    timezone: str = "UTC"
    source: Source
    calculator: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    window: WindowSpec
    trigger: Trigger = Field(default_factory=lambda: Trigger.model_validate({}))
    unit: str | None = None
    """UN/CEFACT code of the KPI value's unit (`unitCode` of `kpiValue`), if it has one."""
    thresholds: tuple[Threshold, ...] = ()

    _calculator: Calculator = PrivateAttr()
    _params: Parameters = PrivateAttr()
    _tz: tzinfo = PrivateAttr()
    _parameters_json: dict[str, Any] = PrivateAttr()
    _formula: str = PrivateAttr()

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG.match(value):
            raise ValueError("must be lower-case letters, digits and '-' (it is part of entity ids)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        parse_timezone(value)
        return value

    @field_validator("calculator")
    @classmethod
    def _known_calculator(cls, value: str) -> str:
        find_calculator(value)
        return value

    @field_validator("thresholds")
    @classmethod
    def _ascending(cls, bands: tuple[Threshold, ...]) -> tuple[Threshold, ...]:
        limits = [band.up_to for band in bands]
        if any(limit is None for limit in limits[:-1]):
            raise ValueError("only the last threshold may leave out `up_to`")
        numbers = [limit for limit in limits if limit is not None]
        if numbers != sorted(numbers):
            raise ValueError("thresholds must be in ascending order of `up_to`")
        return bands

    @model_validator(mode="after")
    def _calculator_fits(self) -> KpiDefinition:
        calculator = find_calculator(self.calculator)
        try:
            params = calculator.parameters(self.parameters)
        except ValidationError as error:
            raise ValueError(f"parameters of {self.calculator}: {_first_reasons(error)}") from None
        if self.window.kind not in calculator.windows:
            raise ValueError(
                f"window {self.window.kind!r} does not fit calculator {self.calculator}"
                f" (it takes {list(calculator.windows)})"
            )
        missing = [a for a in calculator.attributes(params) if a not in self.source.attributes]
        if missing:
            raise ValueError(f"source.attributes lacks {missing}, which {self.calculator} reads")
        self._calculator = calculator
        self._params = params
        self._tz = parse_timezone(self.timezone)
        # Written into every KPI entity: computed once, not per window.
        self._parameters_json = params.model_dump(mode="json")
        dumped = params.model_dump(mode="json", exclude_defaults=True)
        self._formula = f"{self.calculator}(" + ", ".join(f"{key}={value}" for key, value in dumped.items()) + ")"
        return self

    @property
    def parameters_json(self) -> dict[str, Any]:
        """The calculator parameters as JSON (with defaults), as provenance records them."""
        return self._parameters_json

    @property
    def formula(self) -> str:
        """`calculator(parameter=value, …)` with the parameters that differ from the defaults."""
        return self._formula

    @property
    def calculator_impl(self) -> Calculator:
        return self._calculator

    @property
    def params(self) -> Parameters:
        return self._params

    @property
    def tz(self) -> tzinfo:
        return self._tz

    @property
    def frequency(self) -> str:
        return self.window.frequency or CALCULATION_FREQUENCY[self.window.kind]

    @property
    def custom_bounds(self) -> tuple[datetime, datetime] | None:
        if self.window.kind != "custom":
            return None
        return _moment(self.window.start, self.tz), _moment(self.window.end, self.tz)

    def standing(self, value: Any) -> str | None:
        """The `currentStanding` of a value by the thresholds (None without thresholds or a number)."""
        if not self.thresholds or not isinstance(value, int | float) or isinstance(value, bool):
            return None
        for band in self.thresholds:
            if band.up_to is None or value <= band.up_to:
                return band.standing
        return None


def _moment(value: datetime | date | None, tz: tzinfo) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=tz)
    assert value is not None
    return datetime(value.year, value.month, value.day, tzinfo=tz)


def _first_reasons(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in problem['loc']) or '(top)'}: {problem['msg']}" for problem in error.errors()
    )


class InvalidDefinition(ValueError):
    """A definition file that cannot be used: says which file, which field and why."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = Path(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


_FILE_DEFAULTS = ("city", "organization", "timezone")


def parse_definitions(document: Any, path: Path | str = "<definitions>") -> list[KpiDefinition]:
    """The KPIs of one parsed YAML document; InvalidDefinition names every problem found."""
    if not isinstance(document, Mapping):
        raise InvalidDefinition(path, ["the file must be a mapping with a `kpis` list"])
    unknown = set(document) - {*_FILE_DEFAULTS, "kpis"}
    if unknown:
        allowed = ", ".join([*_FILE_DEFAULTS, "kpis"])
        raise InvalidDefinition(path, [f"{sorted(unknown)}: unknown top-level keys (allowed: {allowed})"])
    entries = document.get("kpis")
    if not isinstance(entries, list) or not entries:
        raise InvalidDefinition(path, ["kpis: must be a non-empty list of KPI definitions"])
    defaults = {key: document[key] for key in _FILE_DEFAULTS if key in document}
    definitions: list[KpiDefinition] = []
    problems: list[str] = []
    for index, entry in enumerate(entries):
        label = f"kpis[{index}]" + (f" ({entry['id']})" if isinstance(entry, Mapping) and "id" in entry else "")
        if not isinstance(entry, Mapping):
            problems.append(f"{label}: must be a mapping")
            continue
        try:
            definitions.append(KpiDefinition.model_validate({**defaults, **entry}))
        except ValidationError as error:
            for problem in error.errors():
                field = ".".join(str(part) for part in problem["loc"]) or "(definition)"
                reason = str(problem["msg"]).removeprefix("Value error, ")
                problems.append(f"{label}: {field}: {reason}")
    if problems:
        raise InvalidDefinition(path, problems)
    return definitions


@dataclass(frozen=True)
class DefinitionSet:
    """Every loaded KPI, by id."""

    definitions: tuple[KpiDefinition, ...]

    def __iter__(self) -> Any:
        return iter(self.definitions)

    def __len__(self) -> int:
        return len(self.definitions)

    def get(self, kpi_id: str) -> KpiDefinition:
        for definition in self.definitions:
            if definition.id == kpi_id:
                return definition
        raise KeyError(kpi_id)

    def for_source(self, entity_type: str) -> list[KpiDefinition]:
        return [d for d in self.definitions if d.source.type == entity_type]

    @property
    def source_types(self) -> list[str]:
        return sorted({d.source.type for d in self.definitions})

    def select(self, ids: Iterable[str]) -> DefinitionSet:
        wanted = set(ids)
        unknown = wanted - {d.id for d in self.definitions}
        if unknown:
            raise KeyError(f"no KPI definition {sorted(unknown)}")
        return DefinitionSet(tuple(d for d in self.definitions if d.id in wanted))


def load_definitions(paths: Iterable[Path | str] | Path | str = SHIPPED_DEFINITIONS) -> DefinitionSet:
    """Every `*.yaml`/`*.yml` file of the given folders (or the files themselves); ids must be unique per city."""
    if isinstance(paths, Path | str):
        paths = [paths]
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            files.extend(sorted([*entry.glob("*.yaml"), *entry.glob("*.yml")]))
        elif entry.exists():
            files.append(entry)
        else:
            raise InvalidDefinition(entry, ["no such file or folder"])
    definitions: list[KpiDefinition] = []
    seen: dict[tuple[str, str], Path] = {}
    for file in files:
        try:
            document = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise InvalidDefinition(file, [f"not valid YAML: {error}"]) from None
        for definition in parse_definitions(document, file):
            key = (definition.city, definition.id)
            if key in seen:
                raise InvalidDefinition(file, [f"id: {definition.id!r} is already defined in {seen[key]}"])
            seen[key] = file
            definitions.append(definition)
    return DefinitionSet(tuple(definitions))
