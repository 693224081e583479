"""Reference data shipped with the code: the 195 countries, the six sectors, seed projects.

Pure Python, no database: the seed step writes it, the tests check it.
"""

from __future__ import annotations

import csv
import io
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from math import asin, cos, radians, sin, sqrt
from pathlib import Path

from covenant.regions import Region

COUNTRIES_CSV = Path(__file__).parent / "seed" / "countries.csv"
CONTINENTS = ("Africa", "Asia", "Europe", "North America", "South America", "Oceania")
PROJECT_STATUSES = ("planning", "active", "completed", "cancelled")
COVENANT_STATUSES = ("pending", "active", "suspended")
MAX_SAFE_INTEGER = 2**53 - 1
PROJECTS_PER_REGION = 50
_PROJECT_NAMESPACE = uuid.UUID("6f1c2a52-6b0e-4c53-9a57-2f6d8d0f3c11")


@dataclass(frozen=True)
class Country:
    code: str
    iso2: str
    name: str
    continent: str
    latitude: float
    longitude: float
    region: str
    gdp_usd: int
    gdp_source: str

    @property
    def contribution_usd(self) -> int:
        return contribution(self.gdp_usd)


@dataclass(frozen=True)
class Sector:
    id: str
    name: str
    description: str


@dataclass(frozen=True)
class SeedProject:
    id: str
    name: str
    description: str
    sector_id: str
    country_code: str
    status: str
    budget_usd: int
    impact_score: Decimal
    progress: int


SECTORS: tuple[Sector, ...] = (
    Sector("agriculture", "Agriculture", "Food security, irrigation, farming and fisheries."),
    Sector("minerals", "Minerals", "Responsible mining, processing and mineral traceability."),
    Sector("energy", "Energy", "Renewable generation, grids, storage and clean cooking."),
    Sector("technology", "Technology", "Connectivity, digital public goods and research."),
    Sector("health", "Health", "Primary care, vaccines, clinics and disease surveillance."),
    Sector("education", "Education", "Schools, teacher training and vocational skills."),
)


def contribution(gdp_usd: int) -> int:
    """The covenant contribution: 0.01 % of GDP, rounded down to whole dollars."""
    return gdp_usd // 10_000


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance on a 6371 km sphere (haversine)."""
    p1, p2 = radians(lat1), radians(lat2)
    dp, dl = p2 - p1, radians(lon2 - lon1)
    h = sin(dp / 2) ** 2 + cos(p1) * cos(p2) * sin(dl / 2) ** 2
    return 6371.0 * 2 * asin(sqrt(h))


def nearest_region(latitude: float, longitude: float, regions: Iterable[Region]) -> str:
    return min(
        regions, key=lambda r: distance_km(latitude, longitude, r.latitude, r.longitude)
    ).code


def _data_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@cache
def countries() -> tuple[Country, ...]:
    text = COUNTRIES_CSV.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO("\n".join(_data_lines(text))))
    return tuple(
        Country(
            code=row["code"],
            iso2=row["iso2"],
            name=row["name"],
            continent=row["continent"],
            latitude=float(row["lat"]),
            longitude=float(row["lon"]),
            region=row["region"],
            gdp_usd=int(row["gdp_usd"]),
            gdp_source=row["gdp_source"],
        )
        for row in reader
    )


def data_sources() -> list[str]:
    """The comment header of the country file: its sources and vintage."""
    text = COUNTRIES_CSV.read_text(encoding="utf-8")
    return [line[1:].strip() for line in text.splitlines() if line.startswith("#")]


_PROJECT_KINDS: dict[str, tuple[str, ...]] = {
    "agriculture": (
        "Smallholder Irrigation",
        "Seed Bank Network",
        "Soil Health Programme",
        "Cold Chain Corridor",
        "Drought-Resilient Crops",
    ),
    "minerals": (
        "Mineral Traceability Ledger",
        "Artisanal Mining Safety",
        "Tailings Remediation",
        "Critical Minerals Survey",
        "Refinery Modernisation",
    ),
    "energy": (
        "Solar Mini-Grids",
        "Grid Interconnector",
        "Battery Storage Pilot",
        "Clean Cooking Transition",
        "Geothermal Exploration",
    ),
    "technology": (
        "Rural Broadband",
        "Digital Identity Platform",
        "Open Data Portal",
        "Research Computing Hub",
        "Mobile Payments Rollout",
    ),
    "health": (
        "Primary Care Clinics",
        "Vaccine Cold Storage",
        "Maternal Health Programme",
        "Disease Surveillance Network",
        "Telemedicine Service",
    ),
    "education": (
        "Teacher Training Academy",
        "School Solar and Water",
        "Vocational Skills Centres",
        "Digital Classrooms",
        "Girls' Secondary Scholarships",
    ),
}


def seed_projects(regions: Iterable[Region]) -> tuple[SeedProject, ...]:
    """PROJECTS_PER_REGION projects per region, each in a country of that region, spread over
    sectors and statuses. Deterministic: same data set, same projects, same ids."""
    by_region: dict[str, list[Country]] = {}
    for country in countries():
        by_region.setdefault(country.region, []).append(country)
    projects: list[SeedProject] = []
    names: set[str] = set()
    for region in sorted(regions, key=lambda r: r.code):
        members = sorted(by_region.get(region.code, []), key=lambda c: c.code)
        if not members:
            raise ValueError(f"region {region.code} is home to no country")
        rng = random.Random(f"covenant-seed-{region.code}")  # noqa: S311 - not for security
        for index in range(PROJECTS_PER_REGION):
            country = members[index % len(members)]
            sector = SECTORS[index % len(SECTORS)]
            status = PROJECT_STATUSES[(index // len(SECTORS)) % len(PROJECT_STATUSES)]
            kind = _PROJECT_KINDS[sector.id][(index // len(SECTORS)) % 5]
            progress = {
                "planning": rng.randint(0, 10),
                "active": rng.randint(10, 95),
                "completed": 100,
                "cancelled": rng.randint(0, 60),
            }[status]
            # A region with few countries repeats a (country, sector, kind): later ones are
            # numbered phases, so every seed project has a name of its own.
            name, phase = f"{country.name} {kind}", 1
            while name in names:
                phase += 1
                name = f"{country.name} {kind}, Phase {phase}"
            names.add(name)
            projects.append(
                SeedProject(
                    id=str(uuid.uuid5(_PROJECT_NAMESPACE, f"{region.code}:{index}")),
                    name=name,
                    description=(
                        f"{kind} in {country.name}, funded by the covenant's "
                        f"{sector.name.lower()} window."
                    ),
                    sector_id=sector.id,
                    country_code=country.code,
                    status=status,
                    budget_usd=rng.randrange(500_000, 250_000_000, 1_000),
                    impact_score=Decimal(rng.randint(0, 1000)) / 100,
                    progress=progress,
                )
            )
    return tuple(projects)
