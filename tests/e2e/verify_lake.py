#!/usr/bin/env python3
"""Verifies DoLake's Iceberg changelog tables against the CDC events sent.

    python verify_lake.py --warehouse DIR --namespace NS --expected EVENTS.jsonl [--tables t1,t2]

DIR is a local copy of the warehouse (`{r2BasePath}` of the bucket): a table
lives in DIR/NS/TABLE/{data,metadata}. EVENTS.jsonl holds one protocol event a
line with its source:

    {"sourceDoId": str, "sequence": int, "timestamp": int ms,
     "operation": "INSERT"|"UPDATE"|"DELETE", "table": str, "rowId": str|int,
     "before": obj|null, "after": obj|null, "metadata": any|null}

For every table named in EVENTS.jsonl (or only those of --tables) the latest
metadata (`version-hint.text`, or a higher `vN.metadata.json` when the hint
lags) is read with pyiceberg (`StaticTable.from_metadata`, `scan().to_arrow()`)
and with DuckDB (`iceberg_scan`), and each reader is held to the events:

- the row count equals the number of events, and DuckDB's `count(*)` equals
  pyiceberg's;
- the key (`_cdc_source`, `_cdc_seq`) is unique, no event is missing, no row
  is extra; the expected file itself must not list a key twice;
- per row `_cdc_op`, `_cdc_row_id`, `_cdc_ts` (== timestamp * 1000, a UTC
  timestamptz), `_cdc_before`, `_cdc_metadata`, `_cdc_overflow` and every row
  column equal what the writer's rules (src/lake/changelog.rs) make of the
  event, given the table's final schema: the row image is `after`, else
  `before`; long/double/boolean/string columns take values of their type
  (integers widen into doubles when exact), JSON columns (doc `dolake:json`)
  take objects and arrays as JSON text, anything that does not fit - and
  anything under a `_cdc_` or empty name - goes to `_cdc_overflow`; null and
  missing read the same;
- the fixed columns have their types, and every name that carries a value in
  some event is a column of the table.

Paths inside the metadata (e.g. `s3://bucket/warehouse/ns/t/...`) are mapped
onto DIR: pyiceberg through a FileIO that rewrites the table location prefix,
DuckDB through `allow_moved_paths`. So an exported R2 bucket reads as is.

With `--current-state` the tables are DoLake's current-state tables (in
their own namespace, e.g. `default_current`): the expected rows are the last
image of every live row key (`rowId`), applying the events in file order
(an INSERT or UPDATE sets the key's row, a DELETE removes it), each compared
as above with the key's last event (`_cdc_before` null). Readers apply the
tables' position deletes.

Exit status 0 with one summary line per table, 1 with a bounded list of
differences, 2 on usage errors. `verify()` / `verify_table()` /
`compare_rows()` are importable for tests.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

JSON_DOC = "dolake:json"
RESERVED_PREFIX = "_cdc_"
OPS = ("INSERT", "UPDATE", "DELETE")
# name -> the Iceberg type it must have
FIXED_COLUMNS = {
    "_cdc_op": "string",
    "_cdc_seq": "long",
    "_cdc_ts": "timestamptz",
    "_cdc_source": "string",
    "_cdc_row_id": "string",
    "_cdc_before": "string",
    "_cdc_metadata": "string",
    "_cdc_overflow": "string",
}
JSON_FIXED = ("_cdc_before", "_cdc_metadata", "_cdc_overflow")
UTC_NAMES = {"UTC", "+00:00", "Etc/UTC", "Z", "GMT", "Etc/GMT"}
I64_MIN, I64_MAX, U64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
MAX_DIFF_LINES = 20
_MISSING = object()


# ---------------------------------------------------------------- results


@dataclass
class TableReport:
    """What verifying one table found."""

    table: str
    rows: int | None = None
    files: int | None = None
    snapshots: int | None = None
    metadata: str | None = None
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        status = "ok" if self.ok else f"FAILED ({len(self.errors)} differences)"
        parts = [f"{self.table}: {status}", f"rows={self.rows}", f"files={self.files}",
                 f"snapshots={self.snapshots}"]
        if self.metadata:
            parts.append(os.path.basename(self.metadata))
        line = " ".join(parts)
        if self.notes:
            line += " (" + "; ".join(self.notes) + ")"
        return line


# ---------------------------------------------------------------- expected events


def load_events(path: str) -> tuple[list[dict], list[str]]:
    """The events of a JSONL file and the problems of malformed lines."""
    events, errors = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except ValueError as exc:
                errors.append(f"{path}:{n}: not JSON: {exc}")
                continue
            problem = event_problem(e)
            if problem:
                errors.append(f"{path}:{n}: {problem}")
                continue
            events.append(e)
    return events, errors


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def event_problem(e: Any) -> str | None:
    """Why `e` is not a usable expected event, or None."""
    if not isinstance(e, dict):
        return "not an object"
    for k, kind in (("sourceDoId", str), ("table", str), ("operation", str)):
        if not isinstance(e.get(k), kind):
            return f"`{k}` must be a string"
    if e["operation"] not in OPS:
        return f"unknown operation {e['operation']!r}"
    for k in ("sequence", "timestamp"):
        if not _is_int(e.get(k)):
            return f"`{k}` must be an integer"
    if not (isinstance(e.get("rowId"), str) or _is_int(e.get("rowId"))):
        return "`rowId` must be a string or an integer"
    for k in ("before", "after"):
        if e.get(k) is not None and not isinstance(e[k], dict):
            return f"`{k}` must be an object or null"
    return None


def event_key(e: dict) -> tuple[str, int]:
    return (e["sourceDoId"], e["sequence"])


def group_events(events: Iterable[dict], tables: Iterable[str] | None = None) -> dict[str, list[dict]]:
    """Events by table (in file order); only `tables` when given (each of them
    present, possibly with no events)."""
    wanted = None if tables is None else list(tables)
    out: dict[str, list[dict]] = {t: [] for t in wanted} if wanted is not None else {}
    for e in events:
        if wanted is None or e["table"] in out:
            out.setdefault(e["table"], []).append(e)
    return out


# ---------------------------------------------------------------- the writer's mapping


def serde_normalize(v: Any) -> Any:
    """`v` as serde_json holds it: integers beyond i64/u64 become doubles."""
    if _is_int(v) and not (I64_MIN <= v <= U64_MAX):
        try:
            return float(v)
        except OverflowError:
            return math.inf if v > 0 else -math.inf
    if isinstance(v, list):
        return [serde_normalize(x) for x in v]
    if isinstance(v, dict):
        return {k: serde_normalize(x) for k, x in v.items()}
    return v


def is_row_column_name(name: str) -> bool:
    return bool(name) and not name.startswith(RESERVED_PREFIX)


@dataclass(frozen=True)
class Column:
    """A column of the table: its Iceberg type name and whether it holds JSON text."""

    name: str
    type: str
    json: bool = False


def fit(value: Any, col: Column) -> tuple[bool, Any]:
    """(fits, the value read back) for `value` in `col` (changelog.rs `fit`)."""
    if value is None:
        return True, None
    t = col.type
    if t == "boolean":
        return (True, value) if isinstance(value, bool) else (False, None)
    if t == "long":
        return (True, value) if _is_int(value) and I64_MIN <= value <= I64_MAX else (False, None)
    if t == "double":
        if _is_int(value):
            d = float(value)
            return (True, d) if int(d) == value else (False, None)
        if isinstance(value, float):
            return True, value
        return False, None
    if t == "string":
        if col.json:
            return (True, value) if isinstance(value, (list, dict)) else (False, None)
        return (True, value) if isinstance(value, str) else (False, None)
    return False, None


def expected_row(e: dict, columns: dict[str, Column]) -> tuple[dict[str, Any], list[str]]:
    """The row the writer makes of event `e` in a table with `columns` (the
    final schema), and the names carrying a value that are not columns."""
    after, before = e.get("after"), e.get("before")
    image = after if after is not None else before
    row: dict[str, Any] = {
        "_cdc_op": e["operation"],
        "_cdc_seq": e["sequence"],
        "_cdc_ts": e["timestamp"] * 1000,
        "_cdc_source": e["sourceDoId"],
        "_cdc_row_id": str(e["rowId"]),
        "_cdc_before": serde_normalize(before) if after is not None and before is not None else None,
        "_cdc_metadata": serde_normalize(e.get("metadata")),
    }
    overflow: dict[str, Any] = {}
    absent: list[str] = []
    for name, value in (image or {}).items():
        value = serde_normalize(value)
        if is_row_column_name(name):
            col = columns.get(name)
            if col is not None:
                ok, cell = fit(value, col)
                if ok:
                    row[name] = cell
                    continue
            elif value is None:
                continue  # a null under an unknown name carries nothing
            else:
                absent.append(name)
        overflow[name] = value
    row["_cdc_overflow"] = overflow or None
    return row, absent


# ---------------------------------------------------------------- comparing values


def _float_eq(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:
        return a != 0 or math.copysign(1, a) == math.copysign(1, b)
    if math.isinf(a) or math.isinf(b):
        return False
    # serde_json parses floats "best effort" (no float_roundtrip): 1 ulp.
    return abs(a - b) <= math.ulp(max(abs(a), abs(b)))


def json_equal(a: Any, b: Any) -> bool:
    """Deep equality of parsed JSON that tells booleans, integers, doubles apart."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if _is_int(a) and _is_int(b):
        return a == b
    if isinstance(a, float) and isinstance(b, float):
        return _float_eq(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def value_equal(got: Any, want: Any, col: Column | None) -> bool:
    if want is None or got is None:
        return got is None and want is None
    if col is not None and col.json:
        if not isinstance(got, str):
            return False
        try:
            parsed = json.loads(got)
        except ValueError:
            return False
        return json_equal(parsed, want)
    if col is not None and col.type == "double":
        return isinstance(got, float) and isinstance(want, float) and _float_eq(got, want)
    return json_equal(got, want)


def _short(v: Any, limit: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def compare_rows(
    reader: str,
    rows: list[dict],
    events: list[dict],
    columns: dict[str, Column],
    examples_per_column: int = 3,
) -> list[str]:
    """Differences between the rows one reader returned (timestamps as integer
    microseconds) and the events of the table, as lines prefixed with
    `reader` (when not empty). Value differences are shown for at most
    `examples_per_column` rows per column, then counted."""
    p = f"{reader}: " if reader else ""
    diffs: list[str] = []
    per_column: Counter = Counter()
    if len(rows) != len(events):
        diffs.append(f"{p}{len(rows)} rows, expected {len(events)}")
    got_keys = Counter((r.get("_cdc_source"), r.get("_cdc_seq")) for r in rows)
    for k, n in sorted(((k, n) for k, n in got_keys.items() if n > 1), key=str):
        diffs.append(f"{p}duplicate key {k}: {n} rows")
    want_keys = Counter(event_key(e) for e in events)
    for k, n in sorted(((k, n) for k, n in want_keys.items() if n > 1), key=str):
        diffs.append(f"expected file lists key {k} {n} times")
    missing = sorted(set(want_keys) - set(got_keys), key=str)
    extra = sorted(set(got_keys) - set(want_keys), key=str)
    for label, keys in (("missing", missing), ("extra", extra)):
        if keys:
            shown = ", ".join(str(k) for k in keys[:5])
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            diffs.append(f"{p}{len(keys)} {label} row(s): {shown}{more}")
    by_key: dict[tuple, dict] = {}
    for r in rows:
        by_key.setdefault((r.get("_cdc_source"), r.get("_cdc_seq")), r)
    all_cols = dict(columns)
    for name in FIXED_COLUMNS:
        all_cols.setdefault(name, Column(name, FIXED_COLUMNS[name], name in JSON_FIXED))
    seen: set[tuple] = set()
    for e in events:
        k = event_key(e)
        if k in seen or k not in by_key:
            continue
        seen.add(k)
        got = by_key[k]
        want, _ = expected_row(e, columns)
        for name in sorted(set(all_cols) | set(got) | set(want)):
            g, w = got.get(name, _MISSING), want.get(name)
            if g is _MISSING:
                if w is None:
                    continue
                line = f"{p}row {k} has no column {name!r}, expected {_short(w)}"
            elif not value_equal(g, w, all_cols.get(name)):
                line = f"{p}row {k} column {name!r}: got {_short(g)}, expected {_short(w)}"
            else:
                continue
            per_column[name] += 1
            if per_column[name] <= examples_per_column:
                diffs.append(line)
    for name, n in sorted(per_column.items()):
        if n > examples_per_column:
            diffs.append(f"{p}column {name!r} differs in {n} rows in all")
    return diffs


def merge_reader_diffs(by_reader: dict[str, list[str]]) -> list[str]:
    """One list of the readers' differences (unprefixed lines); a line every
    reader reported is shown once, prefixed with all their names."""
    readers = list(by_reader)
    out, done = [], set()
    for r in readers:
        for line in by_reader[r]:
            if line in done:
                continue
            done.add(line)
            who = [x for x in readers if line in by_reader[x]]
            out.append(f"{'+'.join(who)}: {line}" if not line.startswith("expected file") else line)
    return out


# ---------------------------------------------------------------- finding and reading a table


def find_metadata(table_dir: str) -> tuple[int, str, list[str]]:
    """(version, metadata path, notes) of the latest metadata of a table:
    the version hint's, or a higher vN.metadata.json when the hint lags."""
    meta_dir = os.path.join(table_dir, "metadata")
    notes: list[str] = []
    versions = []
    for p in glob.glob(os.path.join(glob.escape(meta_dir), "v*.metadata.json")):
        m = re.fullmatch(r"v(\d+)\.metadata\.json", os.path.basename(p))
        if m:
            versions.append(int(m.group(1)))
    hint = None
    hint_path = os.path.join(meta_dir, "version-hint.text")
    if os.path.exists(hint_path):
        text = open(hint_path, encoding="utf-8").read().strip()
        if text.isdigit():
            hint = int(text)
        else:
            notes.append(f"version-hint.text holds {text!r}, not a number")
    else:
        notes.append("no version-hint.text")
    if not versions:
        raise FileNotFoundError(f"no vN.metadata.json in {meta_dir}")
    latest = max(versions)
    if hint is not None:
        if hint not in versions:
            notes.append(f"version hint {hint} names a missing file")
        elif hint < latest:
            notes.append(f"version hint {hint} lags, v{latest}.metadata.json used")
    return latest, os.path.join(meta_dir, f"v{latest}.metadata.json"), notes


def _remap_io(table_location: str, table_dir: str):
    """A pyiceberg FileIO that reads paths under `table_location` from `table_dir`."""
    from pyiceberg.io.pyarrow import PyArrowFileIO

    src = table_location.rstrip("/")
    dst = os.path.abspath(table_dir).rstrip("/")

    class RemapFileIO(PyArrowFileIO):
        def _map(self, location: str) -> str:
            if location == src or location.startswith(src + "/"):
                return dst + location[len(src):]
            return location

        def new_input(self, location):
            return super().new_input(self._map(location))

        def new_output(self, location):
            return super().new_output(self._map(location))

        def delete(self, location):
            raise PermissionError("the verifier does not delete")

    return RemapFileIO()


def iceberg_columns(schema) -> dict[str, Column]:
    """Columns of a pyiceberg schema (top level)."""
    out = {}
    for f in schema.fields:
        t = str(f.field_type)
        out[f.name] = Column(f.name, t, f.doc == JSON_DOC)
    return out


def arrow_rows(tbl, reader: str, diffs: list[str]) -> list[dict]:
    """Rows of an Arrow table; timestamp columns as integer microseconds
    (after checking `_cdc_ts` is a UTC timestamp with a time zone)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = {}
    for fld, col in zip(tbl.schema, tbl.columns):
        if pa.types.is_timestamp(fld.type):
            if fld.name == "_cdc_ts" and (fld.type.tz is None or fld.type.tz not in UTC_NAMES):
                diffs.append(f"{reader}: _cdc_ts is {fld.type}, expected a UTC timestamp with time zone")
            col = pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64())
        elif fld.name == "_cdc_ts":
            diffs.append(f"{reader}: _cdc_ts is {fld.type}, not a timestamp")
        cols[fld.name] = col
    return pa.table(cols).to_pylist() if cols else []


_duck = None


def duckdb_connection():
    """A DuckDB connection with the iceberg (and avro) extension loaded from
    the PyPI packages, session time zone UTC."""
    global _duck
    if _duck is None:
        import duckdb
        import duckdb_extension_iceberg

        def ext(mod, name):
            pattern = os.path.join(
                glob.escape(os.path.dirname(mod.__file__)), "extensions", "*", name + ".duckdb_extension"
            )
            found = glob.glob(pattern)
            if not found:
                raise FileNotFoundError(pattern)
            return found[0]

        con = duckdb.connect(
            config={"allow_unsigned_extensions": "true", "autoinstall_known_extensions": "false"}
        )
        try:
            import duckdb_extension_avro

            con.execute(f"LOAD '{_sql_str(ext(duckdb_extension_avro, 'avro'))}'")
        except ImportError:
            pass
        try:  # the HTTP client of ATTACH ... (TYPE iceberg, ENDPOINT ...)
            import duckdb_extension_httpfs

            con.execute(f"LOAD '{_sql_str(ext(duckdb_extension_httpfs, 'httpfs'))}'")
        except ImportError:
            pass
        con.execute(f"LOAD '{_sql_str(ext(duckdb_extension_iceberg, 'iceberg'))}'")
        con.execute("SET TimeZone = 'UTC'")
        _duck = con
    return _duck


def _sql_str(s: str) -> str:
    return s.replace("'", "''")


def _exc(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"


def verify_table(warehouse: str, namespace: str, table: str, events: list[dict]) -> TableReport:
    """Reads one table with pyiceberg and DuckDB and compares it with its events."""
    rep = TableReport(table)
    table_dir = os.path.join(warehouse, namespace, table)
    if not os.path.isdir(os.path.join(table_dir, "metadata")):
        if events:
            rep.errors.append(f"no table at {table_dir} ({len(events)} events expected)")
        else:
            rep.notes.append("absent, no events expected")
            rep.rows = 0
        return rep
    try:
        version, meta_path, notes = find_metadata(table_dir)
    except FileNotFoundError as e:
        rep.errors.append(str(e))
        return rep
    rep.metadata, rep.notes = meta_path, notes

    # pyiceberg
    from pyiceberg.table import StaticTable

    py_rows = None
    try:
        tbl = StaticTable.from_metadata(os.path.abspath(meta_path))
        tbl.io = _remap_io(tbl.metadata.location, table_dir)
        columns = iceberg_columns(tbl.schema())
        rep.snapshots = len(tbl.metadata.snapshots)
        rep.files = sum(1 for _ in tbl.scan().plan_files()) if tbl.metadata.current_snapshot_id is not None else 0
        arrow = tbl.scan().to_arrow()
        py_rows = arrow_rows(arrow, "pyiceberg", rep.errors)
        rep.rows = len(py_rows)
    except Exception as e:  # noqa: BLE001 - any failure to read is a finding
        rep.errors.append(f"pyiceberg cannot read {meta_path}: {_exc(e)}")
        return rep

    for name, t in FIXED_COLUMNS.items():
        c = columns.get(name)
        if c is None:
            rep.errors.append(f"schema has no column {name!r}")
        elif c.type != t or c.json != (name in JSON_FIXED):
            rep.errors.append(f"schema: {name!r} is {c.type}{' (json)' if c.json else ''}, expected {t}")
    absent = Counter()
    for e in events:
        absent.update(expected_row(e, columns)[1])
    for name, n in sorted(absent.items()):
        rep.errors.append(f"schema has no column {name!r}, yet {n} event(s) carry a value under it")


    # DuckDB: the same version, paths moved onto the local directory.
    scan = (
        f"iceberg_scan('{_sql_str(os.path.abspath(table_dir))}', "
        f"allow_moved_paths = true, version = '{version}')"
    )
    try:
        con = duckdb_connection()
        duck_rows = arrow_rows(con.execute(f"SELECT * FROM {scan}").to_arrow_table(), "duckdb", rep.errors)
        (count,) = con.execute(f"SELECT count(*) FROM {scan}").fetchone()
    except Exception as e:  # noqa: BLE001
        rep.errors.append(f"duckdb cannot read {table_dir} v{version}: {_exc(e)}")
        return rep
    if count != len(py_rows):
        rep.errors.append(f"duckdb count(*) = {count}, pyiceberg read {len(py_rows)} rows")
    rep.errors += merge_reader_diffs({
        "pyiceberg": compare_rows("", py_rows, events, columns),
        "duckdb": compare_rows("", duck_rows, events, columns),
    })
    return rep


def verify(
    warehouse: str,
    namespace: str,
    expected: str | list[dict],
    tables: Iterable[str] | None = None,
    current_state: bool = False,
) -> tuple[list[TableReport], list[str]]:
    """Verifies every table of the expected events (a JSONL path or a list of
    events), or only `tables`. Returns the reports and file-level errors."""
    if isinstance(expected, str):
        events, errors = load_events(expected)
    else:
        events, errors = [], []
        for n, e in enumerate(expected, 1):
            p = event_problem(e)
            if p:
                errors.append(f"event {n}: {p}")
            else:
                events.append(e)
    groups = group_events(events, tables)
    if current_state:
        groups = {t: current_rows(evs) for t, evs in groups.items()}
    reports = [verify_table(warehouse, namespace, t, evs) for t, evs in sorted(groups.items())]
    return reports, errors


def current_rows(events: list[dict]) -> list[dict]:
    """The last event of every live row key of one table's events (in
    order), as the event a current-state row must equal."""
    live: dict[Any, dict] = {}
    for e in events:
        key = json.dumps(e["rowId"])
        live.pop(key, None)  # a re-insert moves the key to the end
        if e["operation"] != "DELETE":
            live[key] = {**e, "before": None}
    return list(live.values())


def format_result(reports: list[TableReport], errors: list[str], limit: int = MAX_DIFF_LINES) -> tuple[bool, str]:
    """(ok, text): summary lines per table, then at most `limit` differences."""
    lines = [r.summary() for r in reports]
    diffs = list(errors) + [f"{r.table}: {d}" for r in reports for d in r.errors]
    if not reports and not errors:
        diffs.append("no table to verify (empty expected file?)")
    ok = not diffs
    if diffs:
        lines.append(f"{len(diffs)} difference(s):")
        lines += ["  " + d for d in diffs[:limit]]
        if len(diffs) > limit:
            lines.append(f"  ... and {len(diffs) - limit} more")
    return ok, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warehouse", required=True, help="local copy of the warehouse (DIR/NS/TABLE)")
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--expected", required=True, help="JSONL of the events sent, one per line")
    ap.add_argument("--tables", help="comma-separated tables to verify (default: all in the expected file)")
    ap.add_argument("--current-state", action="store_true", help="the tables are current-state tables")
    a = ap.parse_args(argv)
    tables = [t for t in a.tables.split(",") if t] if a.tables else None
    if not os.path.isdir(a.warehouse):
        print(f"no such directory: {a.warehouse}", file=sys.stderr)
        return 2
    reports, errors = verify(a.warehouse, a.namespace, a.expected, tables, a.current_state)
    ok, text = format_result(reports, errors)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
