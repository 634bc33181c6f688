"""NGSI-LD geo-queries: validate the parameters, pre-filter in SQL on `geo_bbox`, decide exactly with shapely.

GS CIM 009 v1.8 4.10. Coordinates are WGS84 (longitude, latitude); distances are metres on
the WGS84 mean sphere: haversine between points, and between the nearest points of other shapes.
`within` and `contains` include the boundary (shapely `covered_by` / `covers`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import shapely
from psycopg import sql
from shapely.geometry import Point, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import nearest_points
from shapely.validation import explain_validity

from broker.query.params import Param
from ngsi.errors import BadRequestData

EARTH_RADIUS_M = 6_371_008.8
"""Mean radius of the WGS84 ellipsoid (IUGG), the sphere all distances are measured on."""

LOCATION = "location"
LOCATION_IRI = "https://uri.etsi.org/ngsi-ld/location"

Georel = Literal["near", "within", "contains", "intersects", "equals", "disjoint", "overlaps"]
GEORELS: tuple[Georel, ...] = ("near", "within", "contains", "intersects", "equals", "disjoint", "overlaps")
GEOMETRIES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon")
_DEPTH = {"Point": 1, "MultiPoint": 2, "LineString": 2, "MultiLineString": 3, "Polygon": 3, "MultiPolygon": 4}
_DISTANCE = re.compile(r"(maxDistance|minDistance)(?:==|:|=)(.*)")


@dataclass(frozen=True)
class GeoQuery:
    """A validated geo-query; `shape` is the query geometry for shapely."""

    georel: Georel
    geometry: str
    coordinates: Any
    geoproperty: str = LOCATION
    max_distance: float | None = None
    min_distance: float | None = None
    shape: BaseGeometry = field(compare=False, repr=False, default=Point(0, 0))

    @property
    def on_location(self) -> bool:
        """Whether the query is about the `location` GeoProperty (the one `geo_bbox` indexes)."""
        return self.geoproperty in (LOCATION, LOCATION_IRI)


def parse_geo_query(
    georel: str | None,
    geometry: str | None,
    coordinates: str | list[Any] | None,
    geoproperty: str | None = None,
) -> GeoQuery:
    """Validate the geo-query parameters; raise BadRequestData naming the parameter and the problem."""
    missing = [
        name
        for name, value in (("georel", georel), ("geometry", geometry), ("coordinates", coordinates))
        if value is None or (isinstance(value, str) and not value.strip())
    ]
    if missing:
        raise BadRequestData(
            "a geo-query needs georel, geometry and coordinates; missing: " + ", ".join(missing),
            parameter=missing[0],
        )
    assert georel is not None and geometry is not None and coordinates is not None
    relation, max_distance, min_distance = _parse_georel(georel)
    canonical = _parse_geometry(geometry)
    positions = _parse_coordinates(coordinates)
    _check_shape(canonical, positions)
    geom = shape({"type": canonical, "coordinates": positions})
    if not geom.is_valid:
        raise BadRequestData(
            f"coordinates: the {canonical} is not valid: {explain_validity(geom)}", parameter="coordinates"
        )
    prop = (geoproperty or LOCATION).strip()
    if not prop:
        raise BadRequestData("geoproperty: empty attribute name", parameter="geoproperty")
    return GeoQuery(relation, canonical, positions, prop, max_distance, min_distance, geom)


def _parse_georel(text: str) -> tuple[Georel, float | None, float | None]:
    relation, *modifiers = [part.strip() for part in text.split(";")]
    if relation not in GEORELS:
        raise BadRequestData(
            f"georel: unknown relation {relation!r}; expected one of {', '.join(GEORELS)}", parameter="georel"
        )
    if relation != "near":
        if modifiers:
            raise BadRequestData(f"georel: {relation!r} takes no modifiers, got {text!r}", parameter="georel")
        return relation, None, None
    distances: dict[str, float] = {}
    for modifier in modifiers:
        match = _DISTANCE.fullmatch(modifier)
        if not match:
            raise BadRequestData(
                f"georel: expected maxDistance==<metres> or minDistance==<metres>, got {modifier!r}",
                parameter="georel",
            )
        name, number = match.groups()
        try:
            metres = float(number)
        except ValueError:
            metres = math.nan
        if not math.isfinite(metres) or metres < 0:
            raise BadRequestData(
                f"georel: {name} must be a non-negative number of metres, got {number!r}", parameter="georel"
            )
        if name in distances:
            raise BadRequestData(f"georel: {name} given twice", parameter="georel")
        distances[name] = metres
    if not distances:
        raise BadRequestData("georel: near needs maxDistance==<metres> or minDistance==<metres>", parameter="georel")
    return "near", distances.get("maxDistance"), distances.get("minDistance")


def _parse_geometry(text: str) -> str:
    for name in GEOMETRIES:
        if text.strip().lower() == name.lower():
            return name
    raise BadRequestData(
        f"geometry: unknown geometry {text!r}; expected one of {', '.join(GEOMETRIES)}", parameter="geometry"
    )


def _parse_coordinates(value: str | list[Any]) -> Any:
    if isinstance(value, list):
        return value
    text = value.strip()
    parsed: Any = None
    for candidate in (text, f"[{text}]"):
        try:
            parsed = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(parsed, list):
            return parsed
    raise BadRequestData(f"coordinates: expected a JSON array of positions, got {value!r}", parameter="coordinates")


def _check_shape(geometry: str, coordinates: Any) -> None:
    depth = _DEPTH[geometry]

    def walk(node: Any, level: int, where: str) -> None:
        if level == 1:
            _check_position(node, where)
            return
        if not isinstance(node, list) or not node:
            raise BadRequestData(
                f"coordinates: a {geometry} needs {depth} levels of nested arrays; {where} is {json.dumps(node)}",
                parameter="coordinates",
            )
        for index, child in enumerate(node):
            walk(child, level - 1, f"{where}[{index}]")

    walk(coordinates, depth, "coordinates")
    lines: list[list[Any]] = []
    rings: list[list[Any]] = []
    if geometry == "LineString":
        lines = [coordinates]
    elif geometry == "MultiLineString":
        lines = coordinates
    elif geometry == "Polygon":
        rings = coordinates
    elif geometry == "MultiPolygon":
        rings = [ring for polygon in coordinates for ring in polygon]
    for line in lines:
        if len(line) < 2:
            raise BadRequestData("coordinates: a line needs at least 2 positions", parameter="coordinates")
    for ring in rings:
        if len(ring) < 4:
            raise BadRequestData("coordinates: a polygon ring needs at least 4 positions", parameter="coordinates")
        if ring[0] != ring[-1]:
            raise BadRequestData(
                f"coordinates: polygon ring is not closed (first {ring[0]} ≠ last {ring[-1]})",
                parameter="coordinates",
            )


def _check_position(position: Any, where: str) -> None:
    if (
        not isinstance(position, list)
        or len(position) not in (2, 3)
        or not all(isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n) for n in position)
    ):
        raise BadRequestData(
            f"coordinates: {where} must be a position [longitude, latitude], got {json.dumps(position)}",
            parameter="coordinates",
        )
    longitude, latitude = position[0], position[1]
    if not -180 <= longitude <= 180:
        raise BadRequestData(
            f"coordinates: longitude {longitude} at {where} is outside [-180, 180]", parameter="coordinates"
        )
    if not -90 <= latitude <= 90:
        raise BadRequestData(
            f"coordinates: latitude {latitude} at {where} is outside [-90, 90]", parameter="coordinates"
        )


# --------------------------------------------------------------------------------------------
# Exact evaluation (Python, shapely)


def entity_shape(geojson: Any) -> BaseGeometry | None:
    """The shapely geometry of a GeoProperty value, or None when it is not usable GeoJSON."""
    if not isinstance(geojson, dict) or geojson.get("type") not in GEOMETRIES:
        return None
    try:
        geom = shape(geojson)
    except Exception:  # malformed stored GeoJSON simply does not match
        return None
    return None if geom.is_empty else geom


def geo_matches(query: GeoQuery, geojson: Any) -> bool:
    """Whether an entity's GeoProperty value (GeoJSON) satisfies the geo-query."""
    geom = entity_shape(geojson)
    if geom is None:
        return False
    if query.georel == "near":
        metres = distance(query, geojson)
        if metres is None:
            return False
        if query.max_distance is not None and metres > query.max_distance:
            return False
        return query.min_distance is None or metres >= query.min_distance
    target = query.shape
    if query.georel == "within":
        return bool(geom.covered_by(target))
    if query.georel == "contains":
        return bool(geom.covers(target))
    if query.georel == "intersects":
        return bool(geom.intersects(target))
    if query.georel == "disjoint":
        return bool(geom.disjoint(target))
    if query.georel == "equals":
        return bool(geom.equals(target))
    return bool(geom.overlaps(target))


def distance(query: GeoQuery, geojson: Any) -> float | None:
    """Metres between the query geometry and an entity's GeoJSON (0 when they touch), None if unusable."""
    geom = entity_shape(geojson)
    if geom is None:
        return None
    target = query.shape
    if geom.intersects(target):
        return 0.0
    if isinstance(geom, Point) and isinstance(target, Point):
        return haversine(target.x, target.y, geom.x, geom.y)
    nearest_query, nearest_entity = nearest_points(target, geom)
    return haversine(nearest_query.x, nearest_query.y, nearest_entity.x, nearest_entity.y)


def haversine(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres between two WGS84 positions."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((phi2 - phi1) / 2) ** 2
        + math.cos(phi1) * math.cos(phi2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


# --------------------------------------------------------------------------------------------
# SQL over geo_bbox (the bounding box of `location`)


def query_box(query: GeoQuery) -> tuple[float, float, float, float] | None:
    """(min lon, min lat, max lon, max lat) any matching `location` must overlap, or None if none can be said."""
    if query.georel == "disjoint" or (query.georel == "near" and query.max_distance is None):
        return None
    min_lon, min_lat, max_lon, max_lat = shapely.bounds(query.shape).tolist()
    if query.georel != "near":
        return min_lon, min_lat, max_lon, max_lat
    assert query.max_distance is not None
    # Bounding box of a spherical cap (Matuschek): latitude grows by r; longitude by
    # asin(sin r / cos lat) at the box's latitude furthest from the equator; a pole in reach
    # (or a cap wider than a hemisphere side) means every longitude.
    angular = query.max_distance / EARTH_RADIUS_M * (1 + 1e-9) + 1e-12
    grown_min_lat = min_lat - math.degrees(angular)
    grown_max_lat = max_lat + math.degrees(angular)
    widest = max(abs(min_lat), abs(max_lat))
    spread = math.sin(angular) / math.cos(math.radians(widest)) if widest < 90 else math.inf
    if angular >= math.pi / 2 or grown_min_lat <= -90 or grown_max_lat >= 90 or spread >= 1:
        return -180.0, max(-90.0, grown_min_lat), 180.0, min(90.0, grown_max_lat)
    delta_lon = math.degrees(math.asin(spread))
    if min_lon - delta_lon < -180 or max_lon + delta_lon > 180:
        return -180.0, grown_min_lat, 180.0, grown_max_lat
    return min_lon - delta_lon, grown_min_lat, max_lon + delta_lon, grown_max_lat


def compile_geo_prefilter(query: GeoQuery, *, table: str | None = None) -> sql.Composable | None:
    """`geo_bbox && box(...)` when the query is on `location` and a box can be said, else None.

    A necessary condition only: rows it keeps must still pass `geo_matches` (except point
    entities under `compile_near_condition`).
    """
    if not query.on_location:
        return None
    bounds = query_box(query)
    if bounds is None:
        return None
    return sql.SQL("{} && {}").format(_bbox_column(table), _box(bounds))


def compile_point_distance(query: GeoQuery, *, table: str | None = None) -> sql.Composable | None:
    """Metres (haversine, same formula as `haversine`) from the query Point to the centre of `geo_bbox`.

    Exact for point entities (their box is a point); None unless the query geometry is a Point
    on `location`. Use it to ORDER BY for `near`.
    """
    if not query.on_location or not isinstance(query.shape, Point):
        return None
    column = _bbox_column(table)
    lon, lat = Param(float(query.shape.x)), Param(float(query.shape.y))
    return sql.SQL(
        "(2 * {radius} * asin(least(1.0::float8, sqrt("
        "power(sin(radians((center({col}))[1] - {lat}::float8) / 2), 2)"
        " + cos(radians({lat2}::float8)) * cos(radians((center({col}))[1]))"
        " * power(sin(radians((center({col}))[0] - {lon}::float8) / 2), 2)))))"
    ).format(radius=sql.Literal(EARTH_RADIUS_M), col=column, lat=lat, lat2=Param(float(query.shape.y)), lon=lon)


def compile_near_condition(query: GeoQuery, *, table: str | None = None) -> sql.Composable | None:
    """For `near` from a Point on `location`: box pre-filter plus exact distance limits for point entities.

    Rows whose `geo_bbox` is not a single point pass through and must be decided by `geo_matches`;
    when all entities are points the result is exact, so `near` + ORDER BY distance + LIMIT runs in SQL.
    """
    if query.georel != "near":
        return None
    point_distance = compile_point_distance(query, table=table)
    if point_distance is None:
        return None
    column = _bbox_column(table)
    limits: list[sql.Composable] = []
    if query.max_distance is not None:
        limits.append(sql.SQL("{} <= {}::float8").format(point_distance, Param(query.max_distance)))
    if query.min_distance is not None:
        limits.append(sql.SQL("{} >= {}::float8").format(point_distance, Param(query.min_distance)))
    not_a_point = sql.SQL("(width({col}) > 0 OR height({col}) > 0)").format(col=column)
    exact = sql.SQL("({} OR ({}))").format(not_a_point, sql.SQL(" AND ").join(limits))
    prefilter = compile_geo_prefilter(query, table=table)
    if prefilter is None:
        return sql.SQL("({} IS NOT NULL AND {})").format(column, exact)
    return sql.SQL("({} AND {})").format(prefilter, exact)


def _bbox_column(table: str | None) -> sql.Composable:
    return sql.Identifier(table, "geo_bbox") if table else sql.Identifier("geo_bbox")


def _box(bounds: tuple[float, float, float, float]) -> sql.Composable:
    min_lon, min_lat, max_lon, max_lat = bounds
    return sql.SQL("box(point({}::float8, {}::float8), point({}::float8, {}::float8))").format(
        Param(float(min_lon)), Param(float(min_lat)), Param(float(max_lon)), Param(float(max_lat))
    )


def geo_bbox_of(geojson: Any) -> tuple[float, float, float, float] | None:
    """(min lon, min lat, max lon, max lat) of a GeoJSON value: what the store writes into `geo_bbox`."""
    geom = entity_shape(geojson)
    if geom is None:
        return None
    min_lon, min_lat, max_lon, max_lat = shapely.bounds(geom).tolist()
    return min_lon, min_lat, max_lon, max_lat
