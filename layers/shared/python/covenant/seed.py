"""Writes the reference data and seed projects. Idempotent, one transaction, run after
migrations by `make dev`, the tests and the deploy.

The file is authoritative for a country's reference fields (codes, name, continent, region,
GDP); its covenant status is operational and never overwritten. Seed projects are created once:
edits survive, and a seed project that was deleted (it has a tombstone) is not brought back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from covenant import analytics
from covenant.db import Database, writer
from covenant.reference import SECTORS, countries, seed_projects
from covenant.regions import Region, load_regions
from covenant.uow import UnitOfWork


@dataclass(frozen=True)
class SeedResult:
    regions: int
    sectors: int
    countries: int
    projects: int


_UPSERT_REGIONS = """
INSERT INTO regions (code, aws_region, is_primary)
SELECT * FROM unnest(CAST(:codes AS text[]), CAST(:aws AS text[]), CAST(:primary AS boolean[]))
ON CONFLICT (code) DO UPDATE
    SET aws_region = EXCLUDED.aws_region, is_primary = EXCLUDED.is_primary
    WHERE (regions.aws_region, regions.is_primary)
        IS DISTINCT FROM (EXCLUDED.aws_region, EXCLUDED.is_primary)
"""

_UPSERT_SECTORS = """
INSERT INTO sectors (id, name, description)
SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:names AS text[]), CAST(:descs AS text[]))
ON CONFLICT (id) DO UPDATE
    SET name = EXCLUDED.name, description = EXCLUDED.description
    WHERE (sectors.name, sectors.description)
        IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.description)
"""

_UPSERT_COUNTRIES = """
INSERT INTO countries (code, iso2, name, continent, region, gdp_usd)
SELECT * FROM unnest(
    CAST(:codes AS text[]), CAST(:iso2 AS text[]), CAST(:names AS text[]),
    CAST(:continents AS text[]), CAST(:regions AS text[]), CAST(:gdp AS bigint[]))
ON CONFLICT (code) DO UPDATE
    SET iso2 = EXCLUDED.iso2, name = EXCLUDED.name, continent = EXCLUDED.continent,
        region = EXCLUDED.region, gdp_usd = EXCLUDED.gdp_usd
    WHERE (countries.iso2, countries.name, countries.continent, countries.region,
           countries.gdp_usd)
        IS DISTINCT FROM (EXCLUDED.iso2, EXCLUDED.name, EXCLUDED.continent, EXCLUDED.region,
                          EXCLUDED.gdp_usd)
"""

_INSERT_PROJECTS = """
INSERT INTO projects (id, name, description, sector_id, country_code, status, budget_usd,
                      impact_score, progress)
SELECT p.* FROM unnest(
    CAST(:ids AS uuid[]), CAST(:names AS text[]), CAST(:descs AS text[]),
    CAST(:sectors AS text[]), CAST(:countries AS text[]), CAST(:statuses AS text[]),
    CAST(:budgets AS bigint[]), CAST(:impacts AS numeric[]), CAST(:progress AS smallint[])
) AS p(id, name, description, sector_id, country_code, status, budget_usd, impact_score,
       progress)
WHERE NOT EXISTS (
    SELECT 1 FROM tombstones t WHERE t.table_name = 'projects' AND t.record_id = p.id::text)
ON CONFLICT (id) DO NOTHING
"""


def seed(database: Database | None = None, regions: Iterable[Region] | None = None) -> SeedResult:
    table = tuple(regions) if regions is not None else load_regions()
    data = countries()
    projects = seed_projects(table)
    with UnitOfWork(database or writer()) as uow:
        uow.run(
            _UPSERT_REGIONS,
            codes=[r.code for r in table],
            aws=[r.aws_region for r in table],
            primary=[r.primary for r in table],
        )
        uow.run(
            _UPSERT_SECTORS,
            ids=[s.id for s in SECTORS],
            names=[s.name for s in SECTORS],
            descs=[s.description for s in SECTORS],
        )
        uow.run(
            _UPSERT_COUNTRIES,
            codes=[c.code for c in data],
            iso2=[c.iso2 for c in data],
            names=[c.name for c in data],
            continents=[c.continent for c in data],
            regions=[c.region for c in data],
            gdp=[c.gdp_usd for c in data],
        )
        uow.run(
            _INSERT_PROJECTS,
            ids=[p.id for p in projects],
            names=[p.name for p in projects],
            descs=[p.description for p in projects],
            sectors=[p.sector_id for p in projects],
            countries=[p.country_code for p in projects],
            statuses=[p.status for p in projects],
            budgets=[p.budget_usd for p in projects],
            impacts=[str(p.impact_score) for p in projects],
            progress=[p.progress for p in projects],
        )
        # Seed rows are written without events: the figures learn them here (covenant.analytics).
        analytics.seed_from_projects(uow)
    return SeedResult(len(table), len(SECTORS), len(data), len(projects))
