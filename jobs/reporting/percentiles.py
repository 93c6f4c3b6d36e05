"""Nearest-rank percentiles in SQL, giving the same numbers on PostgreSQL and SQLite.

The p-th percentile of n values is the value at rank ceil(p * n / 100) of the
ascending values: the smallest value with at least p % of the values at or
below it. No interpolation, so it is always one of the values.

- PostgreSQL: `percentile_disc(p / 100)`, which is exactly that (it takes the
  first value whose cumulative position reaches p / 100 of the rows), in one
  statement with GROUPING SETS for every grouping at once.
- SQLite (no ordered-set aggregates, no grouping sets): the smallest value
  whose CUME_DIST (its last peer's position / n) reaches p / 100, which is
  the same value: a smaller value's last position is below ceil(p * n), so
  its CUME_DIST is below p / 100; ties share the last peer's position. Both
  sides compare the same doubles (k / n against p / 100; distinct fractions
  differ by at least 1 / (100 n), far above rounding). One window, one sort
  per grouping; the window's rows are first materialised through the
  ended_at index so SQLite never picks another index to avoid the sort.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Session

from jobs.reporting.reports import Percentiles

PERCENTILES = (50, 95, 99)
ALL = "*"


@dataclass(frozen=True)
class Measure:
    """A value column, and which rows it is measured over (None: every row where it is not null)."""

    name: str
    column: Any
    only: Any | None = None


def _avg(total: Any, n: int) -> float | None:
    """The mean from an exact integer sum, so both databases round it alike."""
    return round(int(total) / n, 3) if n else None


def percentiles(
    session: Session,
    *,
    where: Sequence[Any],
    measures: Sequence[Measure],
    groups: dict[str, Any],
    skip: frozenset[tuple[str, str]] = frozenset(),
) -> dict[tuple[str, str, Any], Percentiles]:
    """{(measure, group, key): Percentiles} for each measure over all rows (group "*", key "*") and
    per value of each group column. ``skip`` leaves out (measure, group) pairs nobody needs."""
    if session.get_bind().dialect.name == "postgresql":
        return _postgres(session, where, measures, groups, skip)
    return _sqlite(session, where, measures, groups, skip)


def _postgres(
    session: Session,
    where: Sequence[Any],
    measures: Sequence[Measure],
    groups: dict[str, Any],
    skip: frozenset[tuple[str, str]],
) -> dict[tuple[str, str, Any], Percentiles]:
    fractions = postgresql.array([sa.literal(p / 100, sa.Float) for p in PERCENTILES])
    columns: list[Any] = [sa.func.grouping(*groups.values()).label("g"), *groups.values()]
    for m in measures:
        only = m.column.isnot(None) if m.only is None else sa.and_(m.column.isnot(None), m.only)
        columns += [
            sa.func.count(m.column).filter(only),
            sa.type_coerce(
                sa.func.percentile_disc(fractions).within_group(m.column).filter(only),
                postgresql.ARRAY(sa.Integer),
            ),
            sa.func.sum(m.column).filter(only),
            sa.func.max(m.column).filter(only),
        ]
    sets = "GROUPING SETS ((), " + ", ".join(f"({name})" for name in _column_names(groups)) + ")"
    query = sa.select(*columns).where(*where).group_by(sa.text(sets))
    out: dict[tuple[str, str, Any], Percentiles] = {}
    names = list(groups)
    for row in session.execute(query).all():
        flags, keys, values = row[0], row[1 : 1 + len(names)], row[1 + len(names) :]
        group, key = ALL, ALL
        for i, name in enumerate(names):  # GROUPING() sets bit (len-1-i) when column i is NOT grouped
            if not flags & (1 << (len(names) - 1 - i)):
                group, key = name, keys[i]
        for j, m in enumerate(measures):
            n, picked, total, top = values[4 * j : 4 * j + 4]
            if (m.name, group) in skip or not n:
                continue
            out[(m.name, group, key)] = Percentiles(
                count=n, p50=picked[0], p95=picked[1], p99=picked[2], avg=_avg(total, n), max=top
            )
    return out


def _column_names(groups: dict[str, Any]) -> list[str]:
    return [column.key for column in groups.values()]


def _sqlite(
    session: Session,
    where: Sequence[Any],
    measures: Sequence[Measure],
    groups: dict[str, Any],
    skip: frozenset[tuple[str, str]],
) -> dict[tuple[str, str, Any], Percentiles]:
    base_columns = {name: column.label(name) for name, column in groups.items()}
    values = {m.name: m.column.label(m.name) for m in measures}
    flags = {m.name: (m.only if m.only is not None else sa.true()).label(f"{m.name}_in") for m in measures}
    rows = (
        sa.select(*base_columns.values(), *values.values(), *flags.values())
        .where(*where)
        .cte("window_rows")
        .prefix_with("MATERIALIZED", dialect="sqlite")
    )
    parts = []
    for m in measures:
        v = rows.c[m.name]
        for group in [ALL, *groups]:
            if (m.name, group) in skip:
                continue
            key = rows.c[group] if group != ALL else sa.literal(ALL)
            partition = [key] if group != ALL else []
            ranked = (
                sa.select(
                    key.label("k"),
                    v.label("v"),
                    sa.func.cume_dist().over(partition_by=partition, order_by=v).label("cd"),
                )
                .where(v.isnot(None), rows.c[f"{m.name}_in"] == sa.true())
                .subquery()
            )
            picks = [
                sa.func.min(sa.case((ranked.c.cd >= sa.literal(p / 100, sa.Float), ranked.c.v)))
                for p in PERCENTILES
            ]
            parts.append(
                sa.select(
                    sa.literal(m.name).label("measure"),
                    sa.literal(group).label("grp"),
                    ranked.c.k,
                    sa.func.count(),
                    *picks,
                    sa.func.sum(ranked.c.v),
                    sa.func.max(ranked.c.v),
                ).group_by(ranked.c.k)
            )
    out: dict[tuple[str, str, Any], Percentiles] = {}
    for measure, group, key, n, p50, p95, p99, total, top in session.execute(sa.union_all(*parts)).all():
        out[(measure, group, key)] = Percentiles(
            count=n, p50=p50, p95=p95, p99=p99, avg=_avg(total, n), max=top
        )
    return out
