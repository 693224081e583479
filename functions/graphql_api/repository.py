"""The SQL of the GraphQL API: parameterised, keyset-paginated, batched per list level.

A list costs one statement however many parents it hangs under: nested connections take
every parent key of the level at once (unnest + LATERAL, one LIMIT per parent), and
many-to-one fields take every key at once (= ANY). Counts are separate statements, run only
when totalCount is selected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aws_lambda_powertools import Tracer

from covenant.db import Row, Session
from graphql_api.errors import BadUserInput
from graphql_api.pagination import Order, decode_cursor
from graphql_api.validation import search_text

tracer = Tracer()  # each statement is an X-Ray subsegment in AWS; a no-op elsewhere


@dataclass(frozen=True)
class Table:
    name: str
    alias: str
    # Column -> how it is read ("{a}" stands for the table's alias; None: as it is), in the
    # order of a full row.
    reads: Mapping[str, str | None]
    # GraphQL field -> the columns it is resolved from; fields not listed need none.
    field_columns: Mapping[str, tuple[str, ...]]
    id_column: str
    id_type: str
    # Columns whose JSON (as PostgreSQL's json_agg writes them) parses back to the very value
    # the driver reads: text, integers, booleans; not timestamps, not floats (7.0 is "7").
    exact_in_json: frozenset[str] = frozenset()

    def expression(self, column: str, alias: str | None = None, name: str | None = None) -> str:
        """How `column` of the row `alias` is read, named `name` (default: the column)."""
        read = self.reads[column]
        source = (
            f"{alias or self.alias}.{column}"
            if read is None
            else read.format(a=alias or self.alias)
        )
        return (
            source if read is None and name in (None, column) else f"{source} AS {name or column}"
        )

    @property
    def columns(self) -> str:
        """Every column: the full row."""
        return ", ".join(self.expression(column) for column in self.reads)

    def select(self, fields: Iterable[str] | None, *always: str) -> str:
        """The select list for a response that asks for `fields` (None: the full row). The id
        (and the `always` columns, e.g. the sort column of a cursor) are always read."""
        return ", ".join(self.expression(column) for column in self.selected(fields, *always))

    def selected(self, fields: Iterable[str] | None, *always: str) -> list[str]:
        """The columns `select` reads, in the order of a full row."""
        if fields is None:
            return list(self.reads)
        wanted = {self.id_column, *always}
        for field in fields:
            wanted.update(self.field_columns.get(field, ()))
        return [column for column in self.reads if column in wanted]


COUNTRIES = Table(
    name="countries",
    alias="c",
    reads={
        "code": "{a}.code::text",
        "iso2": "{a}.iso2::text",
        "name": None,
        "continent": None,
        "region": None,
        "gdp_usd": None,
        "contribution_usd": None,
        "covenant_status": None,
        "joined_at": None,
        "version": None,
        "created_at": None,
        "updated_at": None,
    },
    field_columns={
        "iso2": ("iso2",),
        "name": ("name",),
        "continent": ("continent",),
        "region": ("region",),
        "gdpUsd": ("gdp_usd",),
        "contributionUsd": ("contribution_usd",),
        "covenantStatus": ("covenant_status",),
        "joinedAt": ("joined_at",),
        "version": ("version",),
        "createdAt": ("created_at",),
        "updatedAt": ("updated_at",),
    },
    id_column="code",
    id_type="bpchar",
    exact_in_json=frozenset(
        {
            "code",
            "iso2",
            "name",
            "continent",
            "region",
            "gdp_usd",
            "contribution_usd",
            "covenant_status",
            "version",
        }
    ),
)

PROJECTS = Table(
    name="projects",
    alias="p",
    reads={
        "id": "{a}.id::text",
        "name": None,
        "description": None,
        "sector_id": None,
        "country_code": "{a}.country_code::text",
        "region": None,
        "status": None,
        "budget_usd": None,
        "impact_score": "{a}.impact_score::float8",
        "progress": None,
        "version": None,
        "created_at": None,
        "updated_at": None,
    },
    field_columns={
        "name": ("name",),
        "description": ("description",),
        "sector": ("sector_id",),
        "country": ("country_code",),
        "region": ("region",),
        "status": ("status",),
        "budgetUsd": ("budget_usd",),
        "impactScore": ("impact_score",),
        "progress": ("progress",),
        "version": ("version",),
        "createdAt": ("created_at",),
        "updatedAt": ("updated_at",),
    },
    id_column="id",
    id_type="uuid",
    exact_in_json=frozenset(
        {
            "id",
            "name",
            "description",
            "sector_id",
            "country_code",
            "region",
            "status",
            "budget_usd",
            "progress",
            "version",
        }
    ),
)


@dataclass(frozen=True)
class Join:
    """A many-to-one field read in the statement of its rows' page: the row of `table` whose
    `key` equals the page row's `column`, kept under the page row's `_<field>`."""

    field: str
    table: Table
    column: str
    key: str


PROJECT_COUNTRY = Join("country", COUNTRIES, "country_code", "code")

COUNTRY_ORDERS = {
    "name": Order("name", False, "text"),
    "code": Order("code", False, "bpchar"),
    "gdp_usd": Order("gdp_usd", False, "bigint"),
}
PROJECT_ORDERS = {
    "name": Order("name", False, "text"),
    "budget_usd": Order("budget_usd", False, "bigint"),
    "impact_score": Order("impact_score", False, "numeric"),
    "progress": Order("progress", False, "smallint"),
    "created_at": Order("created_at", False, "timestamptz"),
    "updated_at": Order("updated_at", False, "timestamptz"),
}


def resolve_order(table_orders: Mapping[str, Order], order_by: Mapping[str, Any] | None) -> Order:
    """The Order of an orderBy argument (its field is an enum, mapped to a column)."""
    field = (order_by or {}).get("field") or "name"
    base = table_orders[field]
    descending = (order_by or {}).get("direction") == "desc"
    return Order(base.column, descending, base.sql_type)


class Query:
    """WHERE clauses and their parameters, built up from filters; names are unique."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.params: dict[str, Any] = {}

    def add(self, clause: str, **params: Any) -> None:
        self.clauses.append(clause)
        self.params.update(params)

    @property
    def where(self) -> str:
        return " AND ".join(self.clauses) if self.clauses else "TRUE"


def _like(value: str) -> str:
    escaped = value.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _range(
    query: Query, column: str, low: Any, high: Any, names: tuple[str, str], cast: str
) -> None:
    if low is not None and high is not None and low > high:
        raise BadUserInput(f"filter.{names[0]}", f"must not exceed filter.{names[1]}")
    if low is not None:
        query.add(f"{column} >= CAST(:{names[0]} AS {cast})", **{names[0]: low})
    if high is not None:
        query.add(f"{column} <= CAST(:{names[1]} AS {cast})", **{names[1]: high})


def country_filter(filters: Mapping[str, Any] | None, known_regions: Iterable[str]) -> Query:
    query = Query()
    f = filters or {}
    if f.get("region") is not None:
        if f["region"] not in set(known_regions):
            raise BadUserInput("filter.region", f"must be one of {', '.join(known_regions)}")
        query.add("c.region = :f_region", f_region=f["region"])
    if f.get("continent") is not None:
        query.add("c.continent = :f_continent", f_continent=f["continent"])
    if f.get("covenant_status") is not None:
        query.add("c.covenant_status = :f_status", f_status=f["covenant_status"])
    _range(query, "c.gdp_usd", f.get("gdp_min"), f.get("gdp_max"), ("gdpMin", "gdpMax"), "bigint")
    if f.get("name_contains"):
        name = search_text(f["name_contains"], "filter.nameContains")
        query.add("lower(c.name) LIKE :f_name", f_name=_like(name))
    return query


def project_filter(filters: Mapping[str, Any] | None, known_regions: Iterable[str]) -> Query:
    query = Query()
    f = filters or {}
    if f.get("sector_id") is not None:
        query.add(
            "p.sector_id = :f_sector", f_sector=search_text(f["sector_id"], "filter.sectorId")
        )
    if f.get("status") is not None:
        query.add("p.status = :f_status", f_status=f["status"])
    if f.get("country_code") is not None:
        country = search_text(f["country_code"], "filter.countryCode")
        query.add("p.country_code = CAST(:f_country AS bpchar)", f_country=country.upper())
    if f.get("region") is not None:
        if f["region"] not in set(known_regions):
            raise BadUserInput("filter.region", f"must be one of {', '.join(known_regions)}")
        query.add("p.region = :f_region", f_region=f["region"])
    _range(
        query,
        "p.budget_usd",
        f.get("budget_min"),
        f.get("budget_max"),
        ("budgetMin", "budgetMax"),
        "bigint",
    )
    _range(
        query,
        "p.impact_score",
        f.get("impact_min"),
        f.get("impact_max"),
        ("impactMin", "impactMax"),
        "numeric",
    )
    if f.get("name_contains"):
        name = search_text(f["name_contains"], "filter.nameContains")
        query.add("lower(p.name) LIKE :f_name", f_name=_like(name))
    return query


def _keyset(table: Table, order: Order, after: str | None, query: Query) -> None:
    if after is None:
        return
    value, row_id = decode_cursor(after, order, id_type=table.id_type)
    a = table.alias
    comparison = "<" if order.descending else ">"
    query.add(
        f"({a}.{order.column}, {a}.{table.id_column}) {comparison} "
        f"(CAST(:after_value AS {order.sql_type}), CAST(:after_id AS {table.id_type}))",
        after_value=value,
        after_id=row_id,
    )


def _order_by(table: Table, order: Order) -> str:
    direction = "DESC" if order.descending else "ASC"
    a = table.alias
    return f"{a}.{order.column} {direction}, {a}.{table.id_column} {direction}"


@tracer.capture_method(capture_response=False)
def page(
    session: Session,
    table: Table,
    query: Query,
    order: Order,
    first: int,
    after: str | None,
    fields: Iterable[str] | None = None,
    look_ahead: bool = True,
    with_total: bool = False,
    join: tuple[Join, Iterable[str]] | None = None,
) -> tuple[list[Row], bool, int | None]:
    """One page of a top-level list: its rows, whether more follow (False without
    `look_ahead`, which reads one row beyond the page to know) and, `with_total`, how many
    rows the whole list has (None when the page is empty: then `count` tells). With `join`
    (a many-to-one and the fields asked of it), each row carries that row too, one dict per
    distinct key, read by the same statement."""
    total = ""
    if with_total:
        # The filter without the keyset condition, in an uncorrelated subquery (its alias
        # shadows the outer one): computed once, in the same round trip as the page.
        total = f", (SELECT count(*) FROM {table.name} {table.alias} WHERE {query.where}) AS _total"
    joined = joined_columns = ""
    if join is not None:
        spec, join_fields = join
        joined_columns = "".join(
            f", {spec.table.expression(column, '_j', f'_j_{column}')}"
            for column in spec.table.selected(join_fields)
        )
        joined = f" LEFT JOIN {spec.table.name} _j ON _j.{spec.key} = {table.alias}.{spec.column}"
    _keyset(table, order, after, query)
    statement = (
        f"SELECT {table.select(fields, order.column)}{joined_columns}{total} "
        f"FROM {table.name} {table.alias}{joined} WHERE {query.where} "
        f"ORDER BY {_order_by(table, order)} LIMIT :limit"
    )
    params = {**query.params, "limit": first + 1 if look_ahead else first}
    exact = table.exact_in_json.issuperset(table.selected(fields, order.column)) and (
        join is None or join[0].table.exact_in_json.issuperset(join[0].table.selected(join[1]))
    )
    if exact:
        # The page as one JSON array (see nested_pages): one value to decode instead of a
        # row per item; the count, when asked, is an integer, exact in JSON too.
        page_json = session.scalar(f"SELECT json_agg(x)::text FROM ({statement}) AS x", **params)
        rows = orjson.loads(page_json) if page_json is not None else []
    else:
        rows = session.rows(statement, **params)
    counted = [row.pop("_total") for row in rows] if with_total else []
    if join is not None:
        _split_joined(rows, join[0])
    return rows[:first], len(rows) > first, int(counted[0]) if counted else None


def _split_joined(rows: list[Row], join: Join) -> None:
    found: dict[Any, Row] = {}
    names = [name for name in rows[0] if name.startswith("_j_")] if rows else []
    for row in rows:
        values = {name[3:]: row.pop(name) for name in names}
        key = values[join.key]
        row[f"_{join.field}"] = None if key is None else found.setdefault(key, values)


@tracer.capture_method(capture_response=False)
def count(session: Session, table: Table, query: Query) -> int:
    return int(
        session.scalar(
            f"SELECT count(*) FROM {table.name} {table.alias} WHERE {query.where}", **query.params
        )
    )


@tracer.capture_method(capture_response=False)
def nested_pages(
    session: Session,
    table: Table,
    parent_column: str,
    parent_type: str,
    keys: Sequence[str],
    query: Query,
    order: Order,
    first: int,
    after: str | None,
    fields: Iterable[str] | None = None,
    look_ahead: bool = True,
) -> dict[str, tuple[list[Row], bool]]:
    """The first page of children of every parent key, in one statement (and whether more
    follow, as in `page`).

    When every column read is exact in JSON, each parent's page comes as one JSON array
    (one row per parent instead of one per child: the driver decodes a row in Python, about
    as long as completing it), else as rows."""
    _keyset(table, order, after, query)
    a = table.alias
    columns = table.select(fields, order.column)
    children = (
        f"SELECT {columns} FROM {table.name} {a} "
        f"WHERE {a}.{parent_column} = k.parent_key AND {query.where} "
        f"ORDER BY {_order_by(table, order)} LIMIT :limit"
    )
    params = {
        **query.params,
        "keys": list(keys),
        "limit": first + 1 if look_ahead else first,
    }
    grouped: dict[str, list[Row]] = {key: [] for key in keys}
    if table.exact_in_json.issuperset(table.selected(fields, order.column)):
        for parent_key, page_json in session.run(
            # A plain aggregate over a subquery scan takes its rows in the subquery's order
            # (an ORDER BY in json_agg would sort again: the id is text there, not a uuid).
            f"SELECT k.parent_key::text, (SELECT json_agg(x)::text FROM ({children}) AS x) "
            f"FROM unnest(CAST(:keys AS {parent_type}[])) AS k(parent_key)",
            **params,
        ):
            if page_json is not None:
                grouped[parent_key] = orjson.loads(page_json)
    else:
        for row in session.rows(
            f"SELECT k.parent_key::text AS _parent, x.* "
            f"FROM unnest(CAST(:keys AS {parent_type}[])) AS k(parent_key) "
            f"CROSS JOIN LATERAL ({children}) AS x",
            **params,
        ):
            grouped[row.pop("_parent")].append(row)
    return {key: (rows[:first], len(rows) > first) for key, rows in grouped.items()}


@tracer.capture_method(capture_response=False)
def nested_counts(
    session: Session,
    table: Table,
    parent_column: str,
    parent_type: str,
    keys: Sequence[str],
    query: Query,
) -> dict[str, int]:
    a = table.alias
    rows = session.run(
        f"SELECT {a}.{parent_column}::text, count(*) FROM {table.name} {a} "
        f"WHERE {a}.{parent_column} = ANY(CAST(:keys AS {parent_type}[])) AND {query.where} "
        f"GROUP BY 1",
        **query.params,
        keys=list(keys),
    )
    found = {str(key): int(n) for key, n in rows}
    return {key: found.get(key, 0) for key in keys}


@tracer.capture_method(capture_response=False)
def countries_by_code(
    session: Session, codes: Sequence[str], fields: Iterable[str] | None = None
) -> dict[str, Row]:
    rows = session.rows(
        f"SELECT {COUNTRIES.select(fields)} FROM countries c "
        "WHERE c.code = ANY(CAST(:codes AS bpchar[]))",
        codes=list(codes),
    )
    return {row["code"]: row for row in rows}


@tracer.capture_method(capture_response=False)
def country_by_any_code(
    session: Session, code: str, fields: Iterable[str] | None = None
) -> Row | None:
    return session.one(
        f"SELECT {COUNTRIES.select(fields)} FROM countries c "
        "WHERE c.code = CAST(:code AS bpchar) OR c.iso2 = CAST(:code AS bpchar) LIMIT 1",
        code=code.upper(),
    )


@tracer.capture_method(capture_response=False)
def project_by_id(
    session: Session, project_id: str, fields: Iterable[str] | None = None
) -> Row | None:
    return session.one(
        f"SELECT {PROJECTS.select(fields)} FROM projects p WHERE p.id = CAST(:id AS uuid)",
        id=project_id,
    )


@tracer.capture_method(capture_response=False)
def all_sectors(session: Session) -> list[Row]:
    return session.rows("SELECT id, name, description FROM sectors ORDER BY name")


_STATUS_COUNTS = (
    "count(*) FILTER (WHERE status = 'planning') AS planning, "
    "count(*) FILTER (WHERE status = 'active') AS active, "
    "count(*) FILTER (WHERE status = 'completed') AS completed, "
    "count(*) FILTER (WHERE status = 'cancelled') AS cancelled"
)


@tracer.capture_method(capture_response=False)
def regional_stats(session: Session, region: str | None) -> list[Row]:
    return session.rows(
        f"""
        WITH c AS (
            SELECT region, count(*) AS countries,
                   count(*) FILTER (WHERE covenant_status = 'active') AS active_countries,
                   sum(gdp_usd) AS gdp, sum(contribution_usd) AS contribution
            FROM countries GROUP BY region),
        p AS (
            SELECT region, count(*) AS projects, sum(budget_usd) AS budget,
                   avg(impact_score)::float8 AS impact, {_STATUS_COUNTS}
            FROM projects GROUP BY region)
        SELECT r.code AS region,
               COALESCE(c.countries, 0) AS country_count,
               COALESCE(c.active_countries, 0) AS active_country_count,
               COALESCE(c.gdp, 0) AS total_gdp_usd,
               COALESCE(c.contribution, 0) AS total_contribution_usd,
               COALESCE(p.projects, 0) AS project_count,
               COALESCE(p.budget, 0) AS total_budget_usd,
               p.impact AS average_impact_score,
               COALESCE(p.planning, 0) AS planning, COALESCE(p.active, 0) AS active,
               COALESCE(p.completed, 0) AS completed, COALESCE(p.cancelled, 0) AS cancelled
        FROM regions r
        LEFT JOIN c ON c.region = r.code
        LEFT JOIN p ON p.region = r.code
        {"" if region is None else "WHERE r.code = CAST(:region AS text)"}
        ORDER BY r.code
        """,
        **_only_given(region=region),
    )


def _only_given(**filters: str | None) -> dict[str, str]:
    """The filters a stats statement was given. Without any, its text has no parameter: it is
    planned once per connection (covenant.db: PREPARED_PER_CONNECTION), not on every run."""
    return {name: value for name, value in filters.items() if value is not None}


@tracer.capture_method(capture_response=False)
def global_stats(session: Session) -> Row:
    row = session.one(
        f"""
        SELECT c.country_count, c.active_country_count, c.total_gdp_usd,
               c.total_contribution_usd, p.*
        FROM (SELECT count(*) AS country_count,
                     count(*) FILTER (WHERE covenant_status = 'active') AS active_country_count,
                     COALESCE(sum(gdp_usd), 0) AS total_gdp_usd,
                     COALESCE(sum(contribution_usd), 0) AS total_contribution_usd
              FROM countries) AS c,
             (SELECT count(*) AS project_count,
                     COALESCE(sum(budget_usd), 0) AS total_budget_usd,
                     avg(impact_score)::float8 AS average_impact_score,
                     avg(progress)::float8 AS average_progress, {_STATUS_COUNTS}
              FROM projects) AS p
        """
    )
    assert row is not None
    return row


@tracer.capture_method(capture_response=False)
def sectoral_stats(session: Session, sector: str | None) -> list[Row]:
    # Two steps: projects folded into (sector, country) groups by hashing (1 170 at most),
    # then the groups into sectors, where each group is one country. One
    # `count(DISTINCT country_code)` over the projects would sort every project instead
    # (spilling to disk at 100 000 projects): 0.5x its time at 10 000 projects, 0.26x at
    # 100 000. The averages are the numeric divisions `avg` makes (sum / count of the non-null
    # values), so the answers do not change in any digit.
    return session.rows(
        f"""
        SELECT s.id AS sector_id, s.name AS sector_name, s.description AS sector_description,
               COALESCE(p.projects, 0) AS project_count,
               COALESCE(p.countries, 0) AS country_count,
               COALESCE(p.budget, 0) AS total_budget_usd,
               p.impact AS average_impact_score, p.progress AS average_progress,
               COALESCE(p.planning, 0) AS planning, COALESCE(p.active, 0) AS active,
               COALESCE(p.completed, 0) AS completed, COALESCE(p.cancelled, 0) AS cancelled
        FROM sectors s
        LEFT JOIN (
            SELECT sector_id, sum(n)::bigint AS projects, count(*) AS countries,
                   sum(budget) AS budget,
                   (sum(impact_sum) / sum(impact_n))::float8 AS impact,
                   (sum(progress_sum)::numeric / sum(progress_n))::float8 AS progress,
                   sum(planning)::bigint AS planning, sum(active)::bigint AS active,
                   sum(completed)::bigint AS completed, sum(cancelled)::bigint AS cancelled
            FROM (SELECT sector_id, country_code, count(*) AS n,
                         sum(budget_usd) AS budget, sum(impact_score) AS impact_sum,
                         count(impact_score) AS impact_n, sum(progress) AS progress_sum,
                         count(progress) AS progress_n, {_STATUS_COUNTS}
                  FROM projects
                  {"" if sector is None else "WHERE sector_id = CAST(:sector AS text)"}
                  GROUP BY sector_id, country_code) AS countries
            GROUP BY sector_id) AS p ON p.sector_id = s.id
        {"" if sector is None else "WHERE s.id = CAST(:sector AS text)"}
        ORDER BY s.name
        """,
        **_only_given(sector=sector),
    )


class Statements(Protocol):
    """Where a write runs: a unit of work (its transaction) or a session."""

    def one(self, sql: str, **params: Any) -> Row | None: ...

    def scalar(self, sql: str, **params: Any) -> Any: ...


_OLD = "_old_"


@tracer.capture_method(capture_response=False)
def update_row(
    statements: Statements,
    table: Table,
    key: str,
    assignments: Mapping[str, str],
    params: Mapping[str, Any],
    expected_version: int | None,
) -> tuple[Row, Row] | None:
    """Updates the row `key` in one statement: locks it, checks its version (when one is
    expected), applies `assignments` (column -> SQL expression over `params`; `old.<column>`
    is the locked row) and returns (the row as written, the assigned columns as they were).
    None when no row has that key at the expected version (see `current_version`)."""
    a, id_column = table.alias, table.id_column
    row = statements.one(
        f"UPDATE {table.name} AS {a} "
        f"SET {', '.join(f'{column} = {value}' for column, value in assignments.items())} "
        f"FROM (SELECT * FROM {table.name} "
        f"WHERE {id_column} = CAST(:row_key AS {table.id_type}) FOR UPDATE) AS old "
        f"WHERE {a}.{id_column} = old.{id_column} AND (CAST(:expected_version AS integer) IS NULL "
        "OR old.version = CAST(:expected_version AS integer)) "
        f"RETURNING {table.columns}, "
        + ", ".join(table.expression(c, "old", f"{_OLD}{c}") for c in assignments),
        **params,
        row_key=key,
        expected_version=expected_version,
    )
    if row is None:
        return None
    old = {column: row.pop(f"{_OLD}{column}") for column in assignments}
    return row, old


@tracer.capture_method(capture_response=False)
def delete_row(
    statements: Statements, table: Table, key: str, expected_version: int | None
) -> Row | None:
    """Deletes the row `key` if it is at the expected version; returns it as it was."""
    a, id_column = table.alias, table.id_column
    return statements.one(
        f"DELETE FROM {table.name} AS {a} "
        f"WHERE {a}.{id_column} = CAST(:row_key AS {table.id_type}) "
        "AND (CAST(:expected_version AS integer) IS NULL "
        f"OR {a}.version = CAST(:expected_version AS integer)) RETURNING {table.columns}",
        row_key=key,
        expected_version=expected_version,
    )


def current_version(statements: Statements, table: Table, key: str) -> int | None:
    """The version of the row `key`, None when there is none: why an update or delete of it
    found nothing."""
    found = statements.scalar(
        f"SELECT version FROM {table.name} WHERE {table.id_column} = CAST(:key AS {table.id_type})",
        key=key,
    )
    return None if found is None else int(found)
