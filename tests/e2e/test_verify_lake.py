"""Proves verify_lake.py passes on DoLake's own tables and catches problems.

The tables come from the lake writer itself: `cargo test --test readers` with
DOLAKE_READERS_OUT writes three tables (orders, metrics, logs; several
commits, schema evolution, type conflicts, updates and deletes) and the rows
every reader must return. Those rows are turned back into the protocol events
that produce them (the JSONL format verify_lake.py takes), and the warehouse
is moved away from the location recorded in its metadata, so the verifier has
to map the paths as it must for an exported R2 bucket.

Run: .tools/venv/bin/python -m pytest -q tests/e2e/test_verify_lake.py
"""

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import verify_lake as vl  # noqa: E402

NS = "cdc"
VERIFIER_TABLES = {"orders", "metrics", "logs"}


def rows_to_events(rows, table):
    """The protocol events that make the writer produce `rows` (the reader
    tests' expected rows: JSON columns parsed, timestamps in micros)."""
    events = []
    for r in rows:
        image = {k: v for k, v in r.items() if not k.startswith("_cdc_") and v is not None}
        image.update(r["_cdc_overflow"] or {})
        e = {
            "sourceDoId": r["_cdc_source"],
            "sequence": r["_cdc_seq"],
            "timestamp": r["_cdc_ts"] // 1000,
            "operation": r["_cdc_op"],
            "table": table,
            "rowId": r["_cdc_row_id"],
            "metadata": r["_cdc_metadata"],
        }
        if r["_cdc_op"] == "DELETE":
            e["before"], e["after"] = (image or None), None
        else:
            e["before"], e["after"] = r["_cdc_before"], image
        events.append(e)
    return events


@pytest.fixture(scope="session")
def lake(tmp_path_factory):
    """(warehouse dir, events) of tables written by DoLake's lake writer."""
    out = tmp_path_factory.mktemp("dolake-tables")
    env = dict(os.environ, DOLAKE_READERS_OUT=str(out))
    proc = subprocess.run(
        ["cargo", "test", "--quiet", "--test", "readers"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600,
    )
    if proc.returncode != 0 or not (out / "tables.json").exists():
        pytest.fail("cargo test --test readers failed:\n" + (proc.stdout + proc.stderr)[-3000:])
    # The verifier's own tests use the three changelog tables; the reader
    # tests' other tables (random doubles, ...) are left out of the warehouse.
    tables = [
        t for t in json.loads((out / "tables.json").read_text())["tables"]
        if t["name"] in VERIFIER_TABLES
    ]
    for ns_dir in (out / "warehouse").iterdir():
        for table_dir in ns_dir.iterdir():
            if table_dir.name not in VERIFIER_TABLES:
                shutil.rmtree(table_dir)
    events = []
    for t in tables:
        with open(t["expected"]) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        events += rows_to_events(rows, t["name"])
    # Away from the recorded file:// locations: nothing may be read there.
    exported = out / "exported"
    os.rename(out / "warehouse", exported)
    return str(exported), events


def write_jsonl(path, events):
    with open(path, "w") as f:
        for e in events:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    return str(path)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, os.path.join(HERE, "verify_lake.py"), *args],
        capture_output=True, text=True, timeout=600,
    )


def failures(warehouse, events, tables=None):
    reports, errors = vl.verify(warehouse, NS, events, tables)
    return errors + [f"{r.table}: {d}" for r in reports for d in r.errors]


def find(events, table, pred=lambda e: True):
    for i, e in enumerate(events):
        if e["table"] == table and pred(e):
            return i
    raise AssertionError(f"no such event in {table}")


# ---------------------------------------------------------------- positive


def test_passes_on_dolake_written_tables(lake):
    warehouse, events = lake
    reports, errors = vl.verify(warehouse, NS, events)
    assert errors == []
    assert {r.table: (r.ok, r.errors) for r in reports} == {
        "logs": (True, []), "metrics": (True, []), "orders": (True, [])
    }
    by = {r.table: r for r in reports}
    assert by["orders"].rows == 53 and by["orders"].snapshots == 3
    assert by["logs"].rows == 4510 and by["logs"].files >= 3
    assert by["metrics"].rows == 32 and by["metrics"].snapshots == 2


def test_cli_passes_with_one_line_per_table(lake, tmp_path):
    warehouse, events = lake
    path = write_jsonl(tmp_path / "events.jsonl", events)
    proc = run_cli("--warehouse", warehouse, "--namespace", NS, "--expected", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("logs: ok rows=4510 files=")
    assert "orders: ok rows=53 files=5 snapshots=3 v3.metadata.json" in lines


def test_tables_option_limits_the_check(lake, tmp_path):
    warehouse, events = lake
    broken = [e for e in events if e["table"] != "logs"] + [
        e for e in events if e["table"] == "logs"
    ][1:]
    path = write_jsonl(tmp_path / "events.jsonl", broken)
    proc = run_cli("--warehouse", warehouse, "--namespace", NS, "--expected", path,
                   "--tables", "orders,metrics")
    assert proc.returncode == 0, proc.stdout
    assert "logs" not in proc.stdout
    proc = run_cli("--warehouse", warehouse, "--namespace", NS, "--expected", path, "--tables", "logs")
    assert proc.returncode == 1


def test_a_lagging_version_hint_is_accepted(lake, tmp_path):
    warehouse, events = lake
    wh = tmp_path / "wh"
    shutil.copytree(os.path.join(warehouse, NS, "orders"), wh / NS / "orders")
    (wh / NS / "orders" / "metadata" / "version-hint.text").write_text("2")
    reports, errors = vl.verify(str(wh), NS, events, ["orders"])
    assert errors == [] and reports[0].ok, reports[0].errors
    assert reports[0].metadata.endswith("v3.metadata.json")
    assert any("lags" in n for n in reports[0].notes)


def test_s3_locations_map_onto_the_local_directory(lake):
    warehouse, _ = lake
    table_dir = os.path.join(warehouse, NS, "orders")
    io = vl._remap_io("s3://lakehouse/warehouse/cdc/orders/", table_dir)
    with io.new_input("s3://lakehouse/warehouse/cdc/orders/metadata/v1.metadata.json").open() as f:
        assert json.loads(f.read())["format-version"] == 2


# ---------------------------------------------------------------- negative: the expected file


def test_fails_when_an_event_is_dropped(lake, tmp_path):
    warehouse, events = lake
    i = find(events, "orders", lambda e: e["operation"] == "DELETE")
    dropped = events[:i] + events[i + 1:]
    key = (events[i]["sourceDoId"], events[i]["sequence"])
    diffs = failures(warehouse, dropped)
    assert f"orders: pyiceberg+duckdb: 53 rows, expected 52" in diffs
    assert f"orders: pyiceberg+duckdb: 1 extra row(s): {key}" in diffs
    assert all(d.startswith("orders:") for d in diffs), diffs
    proc = run_cli("--warehouse", warehouse, "--namespace", NS,
                   "--expected", write_jsonl(tmp_path / "e.jsonl", dropped))
    assert proc.returncode == 1
    assert str(key) in proc.stdout


def test_fails_when_an_event_is_duplicated(lake):
    warehouse, events = lake
    i = find(events, "metrics")
    doubled = events + [copy.deepcopy(events[i])]
    key = (events[i]["sourceDoId"], events[i]["sequence"])
    diffs = failures(warehouse, doubled)
    assert "metrics: pyiceberg+duckdb: 32 rows, expected 33" in diffs
    assert f"metrics: expected file lists key {key} 2 times" in diffs


def test_fails_when_an_event_is_missing_from_the_lake(lake):
    """An event the lake does not hold (e.g. lost in a flush)."""
    warehouse, events = lake
    extra = copy.deepcopy(events[find(events, "logs")])
    extra["sequence"] = 999_999
    diffs = failures(warehouse, events + [extra])
    assert "logs: pyiceberg+duckdb: 1 missing row(s): ('app', 999999)" in diffs


def _mutations():
    """(name, table, event predicate, change, expected column in the message)."""

    def set_after(col, value):
        def f(e):
            e["after"][col] = value
        return f

    def set_key(k, value):
        def f(e):
            e[k] = value
        return f

    is_upd = lambda e: e["operation"] == "UPDATE"  # noqa: E731
    first = lambda e: True  # noqa: E731
    return [
        ("string", "orders", first, set_after("customer", "someone else"), "customer"),
        ("long", "metrics", first, set_after("count", 12345), "count"),
        ("double", "logs", first, set_after("latency", 0.125), "latency"),
        ("double 1 -> 1.5", "metrics", first, set_after("value", 1.5), "value"),
        ("bool", "orders", first, set_after("paid", False), "paid"),
        ("nested json", "orders", first, set_after("address", {"city": "Bern", "zip": "3000"}), "address"),
        ("json array order", "orders", first, set_after("tags", [0, "t"]), "tags"),
        ("null -> value", "orders", lambda e: e["after"] and e["after"].get("note") is None
         and e["operation"] == "INSERT", set_after("note", "x"), "note"),
        ("type conflict -> overflow", "orders", first, set_after("id", "zero"), "_cdc_overflow"),
        ("operation", "orders", is_upd, set_key("operation", "INSERT"), "_cdc_op"),
        ("row id", "logs", first, set_key("rowId", "app:other"), "_cdc_row_id"),
        ("timestamp", "metrics", first, lambda e: e.update(timestamp=e["timestamp"] + 1), "_cdc_ts"),
        ("before image", "orders", is_upd, lambda e: e["before"].update(amount=2), "_cdc_before"),
        ("metadata", "orders", is_upd, set_key("metadata", {"txn": 1}), "_cdc_metadata"),
        ("bool vs int in json", "orders", is_upd,
         lambda e: e["metadata"].update(txn=True), "_cdc_metadata"),
    ]


@pytest.mark.parametrize("name,table,pred,change,column", _mutations(), ids=[m[0] for m in _mutations()])
def test_fails_when_a_value_is_changed(lake, name, table, pred, change, column):
    warehouse, events = lake
    changed = copy.deepcopy(events)
    i = find(changed, table, pred)
    change(changed[i])
    key = (changed[i]["sourceDoId"], changed[i]["sequence"])
    diffs = failures(warehouse, changed)
    want = f"{table}: pyiceberg+duckdb: row {key} column {column!r}: got "
    assert any(d.startswith(want) for d in diffs), diffs
    assert all(d.startswith(f"{table}: pyiceberg+duckdb: row {key} column ") for d in diffs), diffs


def test_a_value_needing_a_missing_column_is_reported(lake):
    warehouse, events = lake
    changed = copy.deepcopy(events)
    changed[find(changed, "metrics")]["after"]["unit"] = "ms"
    diffs = failures(warehouse, changed)
    assert "metrics: schema has no column 'unit', yet 1 event(s) carry a value under it" in diffs


def test_many_differences_print_a_bounded_list(lake, tmp_path):
    warehouse, events = lake
    changed = copy.deepcopy(events)
    for e in changed:
        if e["table"] == "logs":
            e["after"]["message"] += "!"
            e["after"]["level"] = "DEBUG"
    path = write_jsonl(tmp_path / "e.jsonl", changed[:-1])
    proc = run_cli("--warehouse", warehouse, "--namespace", NS, "--expected", path)
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert len(lines) <= 3 + 1 + vl.MAX_DIFF_LINES + 1, proc.stdout
    assert "logs: pyiceberg+duckdb: column 'message' differs in 4509 rows in all" in proc.stdout
    assert "logs: pyiceberg+duckdb: column 'level' differs in 4509 rows in all" in proc.stdout
    assert "orders: ok" in proc.stdout and "metrics: ok" in proc.stdout


def test_malformed_expected_lines_and_missing_tables_fail(lake, tmp_path):
    warehouse, events = lake
    path = tmp_path / "e.jsonl"
    ev = dict(events[0], table="nope")
    path.write_text(json.dumps(ev) + "\n{not json\n" + json.dumps(dict(events[0], operation="UPSERT")) + "\n")
    proc = run_cli("--warehouse", warehouse, "--namespace", NS, "--expected", str(path))
    assert proc.returncode == 1
    assert "e.jsonl:2: not JSON" in proc.stdout
    assert "e.jsonl:3: unknown operation 'UPSERT'" in proc.stdout
    assert "nope: no table at" in proc.stdout


# ---------------------------------------------------------------- negative: the lake


def test_fails_when_a_data_file_is_gone(lake, tmp_path):
    warehouse, events = lake
    wh = tmp_path / "wh"
    shutil.copytree(os.path.join(warehouse, NS, "orders"), wh / NS / "orders")
    victim = sorted((wh / NS / "orders" / "data").rglob("*.parquet"))[0]
    victim.unlink()
    diffs = failures(str(wh), events, ["orders"])
    assert diffs and "cannot read" in diffs[0], diffs


def test_duplicate_and_extra_rows_in_the_lake_are_caught():
    """compare_rows on rows as a reader would return them."""
    cols = {"id": vl.Column("id", "long"), "doc": vl.Column("doc", "string", True)}
    ev = lambda seq, after: {  # noqa: E731
        "sourceDoId": "s", "sequence": seq, "timestamp": 1000 + seq, "operation": "INSERT",
        "table": "t", "rowId": seq, "before": None, "after": after, "metadata": None,
    }
    events = [ev(1, {"id": 1, "doc": {"a": [1, 2.5]}}), ev(2, {"id": "two"})]
    rows = [vl.expected_row(e, cols)[0] for e in events]
    rows[0]["doc"] = json.dumps(rows[0]["doc"])
    rows[1]["_cdc_overflow"] = json.dumps(rows[1]["_cdc_overflow"])
    assert rows[1]["_cdc_row_id"] == "2" and rows[1].get("id") is None
    assert rows[0]["_cdc_ts"] == 1_001_000
    assert vl.compare_rows("r", rows, events, cols) == []
    dup = rows + [dict(rows[0])]
    assert vl.compare_rows("r", dup, events, cols) == [
        "r: 3 rows, expected 2", "r: duplicate key ('s', 1): 2 rows"
    ]
    other = dict(rows[0], _cdc_source="t")
    assert vl.compare_rows("r", [other, rows[1]], events, cols) == [
        "r: 1 missing row(s): ('s', 1)", "r: 1 extra row(s): ('t', 1)"
    ]
    as_float = [dict(rows[0], doc=json.dumps({"a": [1.0, 2.5]})), rows[1]]
    assert vl.compare_rows("r", as_float, events, cols) != []


def test_current_rows_are_the_last_image_of_every_live_key():
    from verify_lake import current_rows

    def ev(seq, op, key, n=None):
        e = {"sourceDoId": "s", "sequence": seq, "timestamp": 1, "operation": op, "table": "t", "rowId": key}
        if op != "DELETE":
            e["after"] = {"n": n}
        if op != "INSERT":
            e["before"] = {"n": -1}
        return e

    rows = current_rows([
        ev(1, "INSERT", "a", 1),
        ev(2, "UPDATE", "a", 2),
        ev(3, "INSERT", "b", 3),
        ev(4, "DELETE", "b"),
        ev(5, "DELETE", "c"),
        ev(6, "UPDATE", "d", 6),
        ev(7, "DELETE", "a"),
        ev(8, "INSERT", "a", 8),
        ev(9, "INSERT", 10, 9),
    ])
    assert [(r["rowId"], r["sequence"], r["after"]["n"]) for r in rows] == [("d", 6, 6), ("a", 8, 8), (10, 9, 9)]
    assert all(r["before"] is None for r in rows)
