"""The region table. Its one source is the `covenant:regions` context in cdk.json.

Deployed functions receive the same table through the COVENANT_REGIONS environment variable,
which the CDK app fills from that context; locally the file itself is read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

REGIONS_ENV = "COVENANT_REGIONS"
CONTEXT_KEY = "covenant:regions"


@dataclass(frozen=True)
class Region:
    code: str
    aws_region: str
    primary: bool
    latitude: float
    longitude: float


class RegionTableError(RuntimeError):
    """The region table is missing or malformed."""


def find_cdk_json(start: Path | None = None) -> Path:
    """The project's cdk.json, searched from `start` (default: this file) upwards."""
    here = (start or Path(__file__)).resolve()
    for folder in [here, *here.parents]:
        candidate = folder / "cdk.json"
        if candidate.is_file():
            return candidate
    raise RegionTableError(
        f"cdk.json not found above {here}; set {REGIONS_ENV} to the region table as JSON"
    )


def cdk_context(cdk_json: Path | None = None) -> dict[str, Any]:
    """The `context` object of cdk.json."""
    path = cdk_json or find_cdk_json()
    context = json.loads(path.read_text(encoding="utf-8")).get("context", {})
    if not isinstance(context, dict):
        raise RegionTableError(f"{path}: 'context' must be an object")
    return context


def parse_regions(raw: Any) -> tuple[Region, ...]:
    if not isinstance(raw, list) or not raw:
        raise RegionTableError("region table must be a non-empty list")
    regions: list[Region] = []
    for entry in raw:
        try:
            lat, lon = entry["location"]
            regions.append(
                Region(
                    code=str(entry["code"]),
                    aws_region=str(entry["awsRegion"]),
                    primary=bool(entry["primary"]),
                    latitude=float(lat),
                    longitude=float(lon),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RegionTableError(f"malformed region entry {entry!r}: {exc}") from exc
    codes = [r.code for r in regions]
    if len(set(codes)) != len(codes):
        raise RegionTableError(f"duplicate region codes in {codes}")
    if sum(r.primary for r in regions) != 1:
        raise RegionTableError("exactly one region must be primary")
    return tuple(regions)


@cache
def load_regions() -> tuple[Region, ...]:
    raw = os.environ.get(REGIONS_ENV)
    if raw:
        return parse_regions(json.loads(raw))
    return parse_regions(cdk_context().get(CONTEXT_KEY))


def regions_as_json(regions: tuple[Region, ...]) -> str:
    """The table in the cdk.json shape, for the COVENANT_REGIONS environment variable."""
    return json.dumps(
        [
            {
                "code": r.code,
                "awsRegion": r.aws_region,
                "primary": r.primary,
                "location": [r.latitude, r.longitude],
            }
            for r in regions
        ],
        separators=(",", ":"),
    )


def region_codes() -> tuple[str, ...]:
    return tuple(r.code for r in load_regions())


def primary_region() -> Region:
    return next(r for r in load_regions() if r.primary)


def get_region(code: str) -> Region:
    for region in load_regions():
        if region.code == code:
            return region
    raise RegionTableError(f"unknown region {code!r}; known: {', '.join(region_codes())}")
