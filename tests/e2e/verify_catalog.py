"""Reads DoLake's tables through its Iceberg REST catalog, as engines attach.

pyiceberg (`RestCatalog`, with the deployment's bearer token) and DuckDB
(`ATTACH ... (TYPE iceberg, ENDPOINT ...)` with a TOKEN secret) attach to
`--uri`, list the namespaces and tables, and read every expected table; each
reader is held to the events row by row with verify_lake.py's comparison
(change logs: one row per event; `--current-state NS`: tables in NS hold
the last image of every live key).

Exit 0 when the catalog lists exactly the expected tables and both readers
return exactly the expected rows; 1 with the differences otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import verify_lake as vl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uri", required=True, help="DoLake's base URL (the catalog is at /v1)")
    ap.add_argument("--token", required=True)
    ap.add_argument("--namespace", required=True, help="namespace of the change logs")
    ap.add_argument("--current-state", help="namespace of the current-state tables, if any")
    ap.add_argument("--expected", required=True, help="JSONL of the events sent")
    a = ap.parse_args(argv)

    from pyiceberg.catalog.rest import RestCatalog

    events, errors = vl.load_events(a.expected)
    groups = vl.group_events(events)
    want: dict[tuple[str, str], list[dict]] = {(a.namespace, t): evs for t, evs in groups.items()}
    if a.current_state:
        for t, evs in groups.items():
            want[(a.current_state, t)] = vl.current_rows(evs)

    catalog = RestCatalog("dolake", uri=a.uri, token=a.token)
    namespaces = sorted(ns[0] for ns in catalog.list_namespaces())
    want_ns = sorted({ns for ns, _ in want})
    if namespaces != want_ns:
        errors.append(f"pyiceberg list_namespaces: {namespaces}, expected {want_ns}")
    for ns in want_ns:
        listed = sorted(name for _, name in catalog.list_tables(ns))
        expected = sorted(t for n, t in want if n == ns)
        if listed != expected:
            errors.append(f"pyiceberg list_tables({ns}): {listed}, expected {expected}")

    con = vl.duckdb_connection()
    con.execute(f"CREATE OR REPLACE SECRET dolake_catalog (TYPE iceberg, TOKEN '{vl._sql_str(a.token)}')")
    con.execute(
        f"ATTACH OR REPLACE 'warehouse' AS lake (TYPE iceberg, ENDPOINT '{vl._sql_str(a.uri)}', SECRET dolake_catalog)"
    )
    duck_tables = sorted(
        (s, t)
        for s, t in con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'lake'"
        ).fetchall()
    )
    if duck_tables != sorted(want):
        errors.append(f"duckdb lists {duck_tables}, expected {sorted(want)}")

    lines = []
    for (ns, table), evs in sorted(want.items()):
        diffs: dict[str, list[str]] = {}
        try:
            tbl = catalog.load_table((ns, table))
            columns = vl.iceberg_columns(tbl.schema())
            py_rows = vl.arrow_rows(tbl.scan().to_arrow(), "pyiceberg", errors)
            diffs["pyiceberg"] = vl.compare_rows("", py_rows, evs, columns)
        except Exception as e:  # noqa: BLE001 - any failure to read is a finding
            errors.append(f"{ns}.{table}: pyiceberg through the catalog: {vl._exc(e)}")
            continue
        try:
            arrow = con.execute(f'SELECT * FROM lake."{ns}"."{table}"').to_arrow_table()
            duck_rows = vl.arrow_rows(arrow, "duckdb", errors)
            diffs["duckdb"] = vl.compare_rows("", duck_rows, evs, columns)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{ns}.{table}: duckdb through the catalog: {vl._exc(e)}")
            continue
        errors += [f"{ns}.{table}: {d}" for d in vl.merge_reader_diffs(diffs)]
        lines.append(f"{ns}.{table}: {len(py_rows)} rows (pyiceberg), {len(duck_rows)} rows (duckdb), {len(evs)} expected")

    print("\n".join(lines))
    if errors:
        print(f"{len(errors)} difference(s):")
        for e in errors[: vl.MAX_DIFF_LINES]:
            print("  " + e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
