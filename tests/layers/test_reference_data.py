"""Reference data: the 195 countries, the six sectors and the seed projects, as shipped in the
code (no database) and as written to the database by the seed step."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from decimal import Decimal
from math import pi
from pathlib import Path

import pytest
from pg8000.exceptions import DatabaseError

from covenant.db import sqlstate
from covenant.reference import (
    CONTINENTS,
    MAX_SAFE_INTEGER,
    PROJECT_STATUSES,
    SECTORS,
    contribution,
    countries,
    data_sources,
    distance_km,
    nearest_region,
    seed_projects,
)
from covenant.regions import cdk_context, find_cdk_json, load_regions
from covenant.seed import seed
from covenant.uow import UnitOfWork

REPO_ROOT = Path(__file__).resolve().parents[2]
SIX_CONTINENTS = {"Africa", "Asia", "Europe", "North America", "South America", "Oceania"}
SIX_REGIONS = {"iad", "ams", "syd", "sin", "sfo", "jnb"}
SECTOR_IDS = {"agriculture", "minerals", "energy", "technology", "health", "education"}
# The 193 UN member states and the 2 observer states (Holy See, Palestine) as ISO 3166-1
# alpha-3:alpha-2, written out independently of countries.csv (from the ISO 3166-1 list less
# its 54 entries that are not UN members or observers: territories, Taiwan, Western Sahara,
# Cook Islands, Niue...). Kosovo has no ISO 3166-1 code.
_UN_PAIRS = (
    "AFG:AF AGO:AO ALB:AL AND:AD ARE:AE ARG:AR ARM:AM ATG:AG AUS:AU AUT:AT AZE:AZ BDI:BI BEL:BE "
    "BEN:BJ BFA:BF BGD:BD BGR:BG BHR:BH BHS:BS BIH:BA BLR:BY BLZ:BZ BOL:BO BRA:BR BRB:BB BRN:BN "
    "BTN:BT BWA:BW CAF:CF CAN:CA CHE:CH CHL:CL CHN:CN CIV:CI CMR:CM COD:CD COG:CG COL:CO COM:KM "
    "CPV:CV CRI:CR CUB:CU CYP:CY CZE:CZ DEU:DE DJI:DJ DMA:DM DNK:DK DOM:DO DZA:DZ ECU:EC EGY:EG "
    "ERI:ER ESP:ES EST:EE ETH:ET FIN:FI FJI:FJ FRA:FR FSM:FM GAB:GA GBR:GB GEO:GE GHA:GH GIN:GN "
    "GMB:GM GNB:GW GNQ:GQ GRC:GR GRD:GD GTM:GT GUY:GY HND:HN HRV:HR HTI:HT HUN:HU IDN:ID IND:IN "
    "IRL:IE IRN:IR IRQ:IQ ISL:IS ISR:IL ITA:IT JAM:JM JOR:JO JPN:JP KAZ:KZ KEN:KE KGZ:KG KHM:KH "
    "KIR:KI KNA:KN KOR:KR KWT:KW LAO:LA LBN:LB LBR:LR LBY:LY LCA:LC LIE:LI LKA:LK LSO:LS LTU:LT "
    "LUX:LU LVA:LV MAR:MA MCO:MC MDA:MD MDG:MG MDV:MV MEX:MX MHL:MH MKD:MK MLI:ML MLT:MT MMR:MM "
    "MNE:ME MNG:MN MOZ:MZ MRT:MR MUS:MU MWI:MW MYS:MY NAM:NA NER:NE NGA:NG NIC:NI NLD:NL NOR:NO "
    "NPL:NP NRU:NR NZL:NZ OMN:OM PAK:PK PAN:PA PER:PE PHL:PH PLW:PW PNG:PG POL:PL PRK:KP PRT:PT "
    "PRY:PY PSE:PS QAT:QA ROU:RO RUS:RU RWA:RW SAU:SA SDN:SD SEN:SN SGP:SG SLB:SB SLE:SL SLV:SV "
    "SMR:SM SOM:SO SRB:RS SSD:SS STP:ST SUR:SR SVK:SK SVN:SI SWE:SE SWZ:SZ SYC:SC SYR:SY TCD:TD "
    "TGO:TG THA:TH TJK:TJ TKM:TM TLS:TL TON:TO TTO:TT TUN:TN TUR:TR TUV:TV TZA:TZ UGA:UG UKR:UA "
    "URY:UY USA:US UZB:UZ VAT:VA VCT:VC VEN:VE VNM:VN VUT:VU WSM:WS YEM:YE ZAF:ZA ZMB:ZM ZWE:ZW"
)
UN_STATES = {a3: a2 for a3, a2 in (pair.split(":") for pair in _UN_PAIRS.split())}

# ---------------------------------------------------------------------------------------------
# Countries, pure data
# ---------------------------------------------------------------------------------------------


def test_the_data_set_is_the_195_states() -> None:
    data = countries()
    assert len(data) == 195
    codes = [c.code for c in data]
    assert len(set(codes)) == 195
    assert len({c.iso2 for c in data}) == 195
    assert len({c.name for c in data}) == 195
    # The database's name index is case-insensitive.
    assert len({c.name.lower() for c in data}) == 195
    # The two UN observer states are in; Kosovo and Taiwan (not UN members) are not.
    assert {"PSE", "VAT"} <= set(codes)
    assert {"XKX", "TWN"}.isdisjoint(codes)
    # A few members, by code and alpha-2.
    by_code = {c.code: c for c in data}
    assert by_code["USA"].iso2 == "US"
    assert by_code["DEU"].iso2 == "DE"
    assert by_code["ZAF"].iso2 == "ZA"
    assert by_code["PSE"].iso2 == "PS"
    assert by_code["VAT"].iso2 == "VA"


def test_the_codes_are_the_un_states_with_their_iso_pairs() -> None:
    assert len(UN_STATES) == 195
    assert {c.code: c.iso2 for c in countries()} == UN_STATES


def test_codes_names_and_continents_are_well_formed() -> None:
    assert set(CONTINENTS) == SIX_CONTINENTS
    for country in countries():
        assert re.fullmatch(r"[A-Z]{3}", country.code), country
        assert re.fullmatch(r"[A-Z]{2}", country.iso2), country
        assert country.name == country.name.strip() and 1 <= len(country.name) <= 100, country
        assert country.continent in SIX_CONTINENTS, country
        assert -90 <= country.latitude <= 90 and -180 <= country.longitude <= 180, country
    used = {c.continent for c in countries()}
    assert used == SIX_CONTINENTS


def test_each_country_lives_in_its_nearest_region_and_every_region_has_countries() -> None:
    regions = load_regions()
    for country in countries():
        assert country.region == nearest_region(country.latitude, country.longitude, regions), (
            country.code
        )
    homes = Counter(c.region for c in countries())
    assert set(homes) <= {r.code for r in regions}
    for region in regions:
        assert homes[region.code] >= 1, f"region {region.code} is home to no country"
    # Spot checks that follow from geography.
    by_code = {c.code: c for c in countries()}
    assert by_code["USA"].region == "iad"
    assert by_code["FRA"].region == "ams"
    assert by_code["AUS"].region == "syd"
    assert by_code["IDN"].region == "sin"
    assert by_code["ZAF"].region == "jnb"


def test_the_region_table_is_the_one_in_cdk_json() -> None:
    assert find_cdk_json() == REPO_ROOT / "cdk.json"
    raw = json.loads((REPO_ROOT / "cdk.json").read_text(encoding="utf-8"))
    table = raw["context"]["covenant:regions"]
    assert cdk_context()["covenant:regions"] == table
    assert {entry["code"] for entry in table} == SIX_REGIONS
    assert [(r.code, r.aws_region, r.primary) for r in load_regions()] == [
        (entry["code"], entry["awsRegion"], entry["primary"]) for entry in table
    ]


def test_distances_are_great_circle_kilometres() -> None:
    assert distance_km(0, 0, 0, 0) == 0
    assert distance_km(0, 0, 0, 180) == pytest.approx(pi * 6371.0)
    assert distance_km(90, 0, -90, 0) == pytest.approx(pi * 6371.0)
    # Dublin to Sydney is about 17 200 km; symmetric.
    dublin_sydney = distance_km(53.35, -6.26, -33.87, 151.21)
    assert 17_000 < dublin_sydney < 17_400
    assert distance_km(-33.87, 151.21, 53.35, -6.26) == pytest.approx(dublin_sydney)


def test_gdp_is_whole_dollars_below_two_to_the_53() -> None:
    for country in countries():
        assert type(country.gdp_usd) is int, country
        assert 0 < country.gdp_usd < 2**53, country
        assert country.gdp_source.strip(), f"{country.code} names no GDP source"
    assert MAX_SAFE_INTEGER == 2**53 - 1
    world = sum(c.gdp_usd for c in countries())
    assert 100e12 <= world <= 120e12
    by_code = {c.code: c for c in countries()}
    # IMF WEO October 2024 estimates for 2024: the US about 29 trillion, China about 18.
    assert 27e12 < by_code["USA"].gdp_usd < 31e12
    assert 16e12 < by_code["CHN"].gdp_usd < 20e12
    assert by_code["USA"].gdp_usd == max(c.gdp_usd for c in countries())


def test_the_file_names_its_sources_and_vintage() -> None:
    header = data_sources()
    assert header, "countries.csv has no comment header"
    text = "\n".join(header)
    assert "IMF World Economic Outlook" in text
    # The WEO vintage: its release (April or October) and year.
    assert re.search(r"IMF World Economic Outlook, (April|October) 20\d\d", text)
    assert any(line.lower().startswith("vintage") for line in header)
    # Rows name the IMF vintage or another named source with its year.
    sources = Counter(c.gdp_source for c in countries())
    imf = [s for s in sources if s.startswith("IMF WEO")]
    assert imf and sum(sources[s] for s in imf) >= 150
    for source in sources:
        assert re.search(r"20\d\d", source), source
    # The IMF rows carry the vintage the header names.
    vintage = re.search(r"IMF World Economic Outlook, (April|October) (20\d\d)", text)
    assert vintage is not None
    assert set(imf) == {f"IMF WEO {vintage[1][:3]} {vintage[2]}"}
    # Every other row is marked as an estimate, and a source line of the header names it.
    source_lines = [line for line in header if line.lower().startswith("source")]
    for country in countries():
        if country.gdp_source not in imf:
            assert re.search(r"\((est\.|latest)\)$", country.gdp_source), country
            assert any(country.name in line for line in source_lines), country.code


def test_the_contribution_is_one_ten_thousandth_rounded_down() -> None:
    assert contribution(0) == 0
    assert contribution(9_999) == 0
    assert contribution(10_000) == 1
    assert contribution(19_999) == 1
    assert contribution(29_184_890_000_000) == 2_918_489_000
    assert contribution(MAX_SAFE_INTEGER) == MAX_SAFE_INTEGER // 10_000
    for country in countries():
        assert (
            country.contribution_usd == country.gdp_usd // 10_000 == contribution(country.gdp_usd)
        )


# ---------------------------------------------------------------------------------------------
# Sectors and seed projects, pure data
# ---------------------------------------------------------------------------------------------


def test_the_six_sectors() -> None:
    assert {s.id for s in SECTORS} == SECTOR_IDS
    assert [s.name for s in SECTORS] == [s.id.capitalize() for s in SECTORS]
    for sector in SECTORS:
        assert 0 < len(sector.description) <= 500


def test_seed_projects_are_50_per_region_each_in_a_country_of_that_region() -> None:
    regions = load_regions()
    projects = seed_projects(regions)
    home = {c.code: c.region for c in countries()}
    assert len(projects) >= 300
    assert len(projects) == 50 * len(regions)
    per_region = Counter(home[p.country_code] for p in projects)
    assert per_region == dict.fromkeys((r.code for r in regions), 50)
    assert {p.sector_id for p in projects} == SECTOR_IDS
    assert (
        {p.status for p in projects}
        == set(PROJECT_STATUSES)
        == {
            "planning",
            "active",
            "completed",
            "cancelled",
        }
    )
    # Every region's projects spread over all sectors and statuses too.
    for region in regions:
        mine = [p for p in projects if home[p.country_code] == region.code]
        assert {p.sector_id for p in mine} == SECTOR_IDS, region.code
        assert {p.status for p in mine} == set(PROJECT_STATUSES), region.code


def test_seed_project_values_are_within_their_ranges() -> None:
    projects = seed_projects(load_regions())
    ids = [p.id for p in projects]
    assert len(set(ids)) == len(ids)
    assert len({p.name for p in projects}) == len(projects)
    for project in projects:
        assert str(uuid.UUID(project.id)) == project.id
        assert project.name == project.name.strip() and 1 <= len(project.name) <= 200
        assert len(project.description) <= 5000
        assert type(project.budget_usd) is int and 0 < project.budget_usd < 2**53
        assert isinstance(project.impact_score, Decimal)
        assert Decimal(0) <= project.impact_score <= Decimal(10)
        assert project.impact_score == project.impact_score.quantize(Decimal("0.01"))
        assert -project.impact_score.as_tuple().exponent <= 2
        assert type(project.progress) is int and 0 <= project.progress <= 100
        if project.status == "completed":
            assert project.progress == 100, project
    # Not all alike: the generator really varies budgets, scores and progress.
    assert len({p.budget_usd for p in projects}) > 250
    assert len({p.impact_score for p in projects}) > 200


def test_seed_projects_are_deterministic() -> None:
    regions = load_regions()
    first, second = seed_projects(regions), seed_projects(regions)
    assert first == second
    assert seed_projects(tuple(reversed(regions))) == first
    # Also across processes with different hash seeds (no dependence on hash randomisation).
    script = (
        "import hashlib, json\n"
        "from covenant.reference import seed_projects\n"
        "from covenant.regions import load_regions\n"
        "rows = [[p.id, p.name, p.country_code, p.sector_id, p.status, p.budget_usd,"
        " str(p.impact_score), p.progress] for p in seed_projects(load_regions())]\n"
        "print(hashlib.sha256(json.dumps(rows).encode()).hexdigest())\n"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        env.pop("COVENANT_REGIONS", None)
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            cwd=REPO_ROOT,
            timeout=60,
        )
        digests.add(done.stdout.strip())
    fields = ("id", "name", "country_code", "sector_id", "status", "budget_usd")
    local = [[*(getattr(p, f) for f in fields), str(p.impact_score), p.progress] for p in first]
    assert digests == {hashlib.sha256(json.dumps(local).encode()).hexdigest()}


# ---------------------------------------------------------------------------------------------
# In the database
# ---------------------------------------------------------------------------------------------


def _counts(writer) -> dict[str, int]:
    with writer.session() as session:
        return {
            table: session.scalar(f"SELECT count(*) FROM {table}")
            for table in ("countries", "sectors", "regions", "projects")
        }


def test_the_database_holds_the_reference_data(writer) -> None:
    counts = _counts(writer)
    assert counts["countries"] == 195
    assert counts["sectors"] == 6
    assert counts["regions"] == 6
    assert counts["projects"] >= 300
    with writer.session() as session:
        regions = session.run("SELECT code, aws_region, is_primary FROM regions ORDER BY code")
        rows = session.rows(
            "SELECT code, iso2, name, continent, region, gdp_usd FROM countries ORDER BY code"
        )
        sectors = session.run("SELECT id, name, description FROM sectors ORDER BY id")
        project_ids = {
            row[0]
            for row in session.run(
                "SELECT id::text FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))",
                ids=[p.id for p in seed_projects(load_regions())],
            )
        }
    assert regions == sorted([r.code, r.aws_region, r.primary] for r in load_regions())
    assert rows == [
        {
            "code": c.code,
            "iso2": c.iso2,
            "name": c.name,
            "continent": c.continent,
            "region": c.region,
            "gdp_usd": c.gdp_usd,
        }
        for c in sorted(countries(), key=lambda c: c.code)
    ]
    assert sectors == sorted([s.id, s.name, s.description] for s in SECTORS)
    assert project_ids == {p.id for p in seed_projects(load_regions())}


def test_the_contribution_column_is_derived_from_gdp(writer) -> None:
    with writer.session() as session:
        rows = session.run("SELECT code, gdp_usd, contribution_usd FROM countries")
        # It follows a GDP change inside a transaction (rolled back below).
        session.run("BEGIN")
        try:
            session.run("UPDATE countries SET gdp_usd = 123456789 WHERE code = 'KEN'")
            changed = session.scalar("SELECT contribution_usd FROM countries WHERE code = 'KEN'")
        finally:
            session.run("ROLLBACK")
    assert len(rows) == 195
    for code, gdp, contribution_usd in rows:
        assert contribution_usd == gdp // 10_000, code
    assert changed == 12_345


def test_every_project_is_in_its_countrys_region(writer) -> None:
    with writer.session() as session:
        mismatched = session.scalar(
            "SELECT count(*) FROM projects p JOIN countries c ON c.code = p.country_code "
            "WHERE p.region IS DISTINCT FROM c.region"
        )
        orphans = session.scalar(
            "SELECT count(*) FROM projects p WHERE NOT EXISTS "
            "(SELECT 1 FROM countries c WHERE c.code = p.country_code)"
        )
        kenya = session.scalar("SELECT region FROM countries WHERE code = 'KEN'")
    assert (mismatched, orphans) == (0, 0)

    # The region is derived on insert, whatever a client sends, and cannot be set apart.
    project_id = str(uuid.uuid4())
    wrong = next(r for r in sorted(SIX_REGIONS) if r != kenya)
    with pytest.raises(DatabaseError) as raised, UnitOfWork(writer) as uow:
        uow.run(
            "INSERT INTO projects (id, name, sector_id, country_code, region, budget_usd) "
            "VALUES (CAST(:id AS uuid), 'Derived region', 'health', 'KEN', :region, 1000)",
            id=project_id,
            region=wrong,
        )
        assert (
            uow.scalar("SELECT region FROM projects WHERE id = CAST(:id AS uuid)", id=project_id)
            == kenya
        )
        uow.run(
            "UPDATE projects SET region = :region WHERE id = CAST(:id AS uuid)",
            region=wrong,
            id=project_id,
        )
    assert sqlstate(raised.value) == "23503"  # the (country, region) foreign key
    with writer.session() as session:
        assert (
            session.scalar(
                "SELECT count(*) FROM projects WHERE id = CAST(:id AS uuid)", id=project_id
            )
            == 0
        )


_PROJECT = {
    "name": "Constraint probe",
    "description": "",
    "sector_id": "energy",
    "country_code": "KEN",
    "status": "active",
    "budget_usd": 1_000_000,
    "impact_score": "5.00",
    "progress": 10,
}

_INSERT_PROJECT = """
INSERT INTO projects (id, name, description, sector_id, country_code, status, budget_usd,
                      impact_score, progress)
VALUES (CAST(:id AS uuid), :name, :description, :sector_id, :country_code, :status,
        CAST(:budget_usd AS bigint), CAST(:impact_score AS numeric), CAST(:progress AS int))
"""

CHECK = "23514"  # check_violation
FOREIGN_KEY = "23503"  # foreign_key_violation


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"budget_usd": 0}, CHECK),
        ({"budget_usd": -5}, CHECK),
        ({"budget_usd": 2**53}, CHECK),
        ({"impact_score": "10.5"}, CHECK),
        ({"impact_score": "-0.01"}, CHECK),
        ({"progress": 101}, CHECK),
        ({"progress": -1}, CHECK),
        ({"status": "done"}, CHECK),
        ({"status": "completed", "progress": 50}, CHECK),
        ({"sector_id": "mining"}, FOREIGN_KEY),
        ({"name": ""}, CHECK),
        ({"name": " padded "}, CHECK),
        ({"name": "x" * 201}, CHECK),
        ({"description": "x" * 5001}, CHECK),
    ],
    ids=lambda value: json.dumps(value) if isinstance(value, dict) else value,
)
def test_project_constraints_reject_bad_values(writer, change, expected) -> None:
    valid_id, bad_id = str(uuid.uuid4()), str(uuid.uuid4())
    with pytest.raises(DatabaseError) as raised, UnitOfWork(writer) as uow:
        uow.run(_INSERT_PROJECT, id=valid_id, **_PROJECT)  # accepted, then rolled back
        uow.run(_INSERT_PROJECT, id=bad_id, **{**_PROJECT, **change})
    assert sqlstate(raised.value) == expected, raised.value
    with writer.session() as session:
        left = session.scalar(
            "SELECT count(*) FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))",
            ids=[valid_id, bad_id],
        )
        tombstones = session.scalar(
            "SELECT count(*) FROM tombstones WHERE record_id = ANY(:ids)", ids=[valid_id, bad_id]
        )
    assert (left, tombstones) == (0, 0)


def test_a_project_in_an_unknown_country_is_rejected(writer) -> None:
    project_id = str(uuid.uuid4())
    with pytest.raises(DatabaseError) as raised, UnitOfWork(writer) as uow:
        uow.run(_INSERT_PROJECT, id=project_id, **{**_PROJECT, "country_code": "XXX"})
    assert sqlstate(raised.value) == "23503", raised.value  # foreign_key_violation
    assert raised.value.args[0].get("n") == "projects_country_region"
    with writer.session() as session:
        assert (
            session.scalar(
                "SELECT count(*) FROM projects WHERE id = CAST(:id AS uuid)", id=project_id
            )
            == 0
        )


_COUNTRY = {
    "code": "QZX",
    "iso2": "QZ",
    "name": "Constraint Probe Land",
    "continent": "Africa",
    "region": "jnb",
    "gdp_usd": 1_000_000_000,
    "covenant_status": "pending",
}

_INSERT_COUNTRY = """
INSERT INTO countries (code, iso2, name, continent, region, gdp_usd, covenant_status)
VALUES (:code, :iso2, :name, :continent, :region, CAST(:gdp_usd AS bigint), :covenant_status)
"""


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"region": "xyz"}, FOREIGN_KEY),
        ({"code": "qzx"}, CHECK),
        ({"code": "QZ1"}, CHECK),
        ({"iso2": "Q1"}, CHECK),
        ({"continent": "Antarctica"}, CHECK),
        ({"gdp_usd": 0}, CHECK),
        ({"gdp_usd": 2**53}, CHECK),
        ({"covenant_status": "member"}, CHECK),
        ({"covenant_status": "active"}, CHECK),  # a member needs a joined_at
        ({"name": " Padded "}, CHECK),
    ],
    ids=lambda value: json.dumps(value) if isinstance(value, dict) else value,
)
def test_country_constraints_reject_bad_values(writer, change, expected) -> None:
    row = {**_COUNTRY, **change}
    with pytest.raises(DatabaseError) as raised, UnitOfWork(writer) as uow:
        uow.run(_INSERT_COUNTRY, **row)
    assert sqlstate(raised.value) == expected, raised.value
    with writer.session() as session:
        assert (
            session.scalar(
                "SELECT count(*) FROM countries WHERE upper(code) = upper(:code)", code=row["code"]
            )
            == 0
        )
        assert session.scalar("SELECT count(*) FROM countries") == 195


def test_the_contribution_cannot_be_written(writer) -> None:
    with pytest.raises(DatabaseError) as raised, UnitOfWork(writer) as uow:
        uow.run(
            "UPDATE countries SET contribution_usd = 1 WHERE code = 'KEN'",
        )
    assert sqlstate(raised.value) == "428C9"  # generated_always
    with pytest.raises(DatabaseError) as raised, UnitOfWork(writer) as uow:
        uow.run(
            "INSERT INTO countries (code, iso2, name, continent, region, gdp_usd, "
            "contribution_usd) VALUES ('QZX', 'QZ', 'Probe', 'Africa', 'jnb', 10000, 5)"
        )
    assert sqlstate(raised.value) == "428C9"
    with writer.session() as session:
        assert session.scalar("SELECT count(*) FROM countries WHERE code = 'QZX'") == 0


# ---------------------------------------------------------------------------------------------
# The seed step
# ---------------------------------------------------------------------------------------------


def test_seeding_again_changes_nothing(writer) -> None:
    before = _counts(writer)
    snapshot = "SELECT code, version, gdp_usd, region FROM countries ORDER BY code"
    with writer.session() as session:
        countries_before = session.run(snapshot)
    result = seed()
    result_again = seed()
    assert result == result_again
    assert (result.regions, result.sectors, result.countries, result.projects) == (6, 6, 195, 300)
    assert _counts(writer) == before
    with writer.session() as session:
        assert session.run(snapshot) == countries_before


def _seed_project_row(writer, project_id: str) -> dict | None:
    with writer.session() as session:
        return session.one(
            "SELECT id::text, name, description, sector_id, country_code, status, budget_usd, "
            "impact_score, progress, version FROM projects WHERE id = CAST(:id AS uuid)",
            id=project_id,
        )


def _expected_row(project) -> dict:
    return {
        "id": project.id,
        "name": project.name,
        "description": project.description,
        "sector_id": project.sector_id,
        "country_code": project.country_code,
        "status": project.status,
        "budget_usd": project.budget_usd,
        "impact_score": project.impact_score,
        "progress": project.progress,
    }


def test_a_deleted_seed_project_stays_deleted_until_its_tombstone_goes(writer) -> None:
    project = seed_projects(load_regions())[-1]
    assert _seed_project_row(writer, project.id) is not None
    before = _counts(writer)["projects"]
    try:
        with UnitOfWork(writer) as uow:
            uow.run("DELETE FROM projects WHERE id = CAST(:id AS uuid)", id=project.id)
        seed()
        assert _seed_project_row(writer, project.id) is None, "seed() resurrected a deletion"
        with writer.session() as session:
            assert session.scalar(
                "SELECT count(*) FROM tombstones WHERE table_name = 'projects' AND record_id = :id",
                id=project.id,
            )
        assert _counts(writer)["projects"] == before - 1
    finally:
        # Without its tombstone the seed project is created again, as the file describes it.
        with UnitOfWork(writer) as uow:
            uow.run(
                "DELETE FROM tombstones WHERE table_name = 'projects' AND record_id = :id",
                id=project.id,
            )
        seed()
    restored = _seed_project_row(writer, project.id)
    assert restored is not None
    assert restored.pop("version") == 1
    assert restored == _expected_row(project)
    with writer.session() as session:
        found = session.scalar(
            "SELECT count(*) FROM projects WHERE id = ANY(CAST(:ids AS uuid[]))",
            ids=[p.id for p in seed_projects(load_regions())],
        )
    assert found == 300


def test_seed_keeps_edits_to_projects_and_country_status_but_restores_reference_fields(
    writer,
) -> None:
    project = seed_projects(load_regions())[0]
    with writer.session() as session:
        original = session.one(
            "SELECT description FROM projects WHERE id = CAST(:id AS uuid)", id=project.id
        )
        country = session.one(
            "SELECT covenant_status, joined_at, gdp_usd FROM countries WHERE code = 'NZL'"
        )
    assert original is not None and country is not None
    file_gdp = next(c.gdp_usd for c in countries() if c.code == "NZL")
    try:
        with UnitOfWork(writer) as uow:
            uow.run(
                "UPDATE projects SET description = 'Edited by a user' WHERE id = CAST(:id AS uuid)",
                id=project.id,
            )
            uow.run(
                "UPDATE countries SET covenant_status = 'active', joined_at = now(), "
                "gdp_usd = 42 WHERE code = 'NZL'"
            )
        seed()
        with writer.session() as session:
            assert (
                session.scalar(
                    "SELECT description FROM projects WHERE id = CAST(:id AS uuid)",
                    id=project.id,
                )
                == "Edited by a user"
            )
            after = session.one(
                "SELECT covenant_status, gdp_usd, contribution_usd FROM countries "
                "WHERE code = 'NZL'"
            )
        # The operational status is kept; the file's GDP wins over the edit.
        assert after == {
            "covenant_status": "active",
            "gdp_usd": file_gdp,
            "contribution_usd": file_gdp // 10_000,
        }
    finally:
        with UnitOfWork(writer) as uow:
            uow.run(
                "UPDATE projects SET description = :d WHERE id = CAST(:id AS uuid)",
                d=original["description"],
                id=project.id,
            )
            uow.run(
                "UPDATE countries SET covenant_status = :s, joined_at = :j, gdp_usd = :g "
                "WHERE code = 'NZL'",
                s=country["covenant_status"],
                j=country["joined_at"],
                g=country["gdp_usd"],
            )
