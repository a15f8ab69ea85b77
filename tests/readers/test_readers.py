"""DoLake's tables read back by pyiceberg, DuckDB and iceberg-rust.

`run.sh` writes the tables (`cargo test --test readers` with
`DOLAKE_READERS_OUT`), runs the iceberg-rust reader, then this suite, which
holds every reader to the same check: every row and every value equals the
expected rows derived from the events sent, and the row counts agree.

Environment:
  DOLAKE_READERS_OUT   directory with tables.json, expected/, warehouse/
  DOLAKE_ICEBERG_RS    directory with the iceberg-rust reader's dumps
"""

import glob
import json
import os
import struct

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyiceberg.expressions import GreaterThanOrEqual, LessThan
from pyiceberg.table import StaticTable

OUT = os.environ.get("DOLAKE_READERS_OUT")
RS_OUT = os.environ.get("DOLAKE_ICEBERG_RS")

if not OUT or not os.path.exists(os.path.join(OUT, "tables.json")):
    pytest.skip(
        "DOLAKE_READERS_OUT with tables.json is not set; run tests/readers/run.sh",
        allow_module_level=True,
    )

with open(os.path.join(OUT, "tables.json")) as f:
    TABLES = json.load(f)["tables"]
NAMES = [t["name"] for t in TABLES]
BY_NAME = {t["name"]: t for t in TABLES}


def table_param(fn):
    return pytest.mark.parametrize("name", NAMES)(fn)


# ---------------------------------------------------------------- helpers


def expected_rows(t):
    with open(t["expected"]) as f:
        return [json.loads(line) for line in f if line.strip()]


def normalize_arrow(tbl: pa.Table):
    """Rows as dicts: timestamps as integer microseconds."""
    cols = {}
    for field, col in zip(tbl.schema, tbl.columns):
        if pa.types.is_timestamp(field.type):
            col = pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64())
        cols[field.name] = col
    return pa.table(cols).to_pylist() if cols else []


def key(row):
    return (row["_cdc_source"], row["_cdc_seq"])


def compare(t, got_rows, want_rows, reader):
    json_cols = set(t["json_columns"])
    assert len(got_rows) == len(want_rows), f"{reader}: row count"
    got_rows = sorted(got_rows, key=key)
    want_rows = sorted(want_rows, key=key)
    for got, want in zip(got_rows, want_rows):
        got = dict(got)
        for c in json_cols:
            if got.get(c) is not None:
                assert isinstance(got[c], str), f"{reader}: {c} should be JSON text"
                got[c] = json.loads(got[c])
        for c in set(got) | set(want):
            g, w = got.get(c), want.get(c)
            assert g == w and type(g) is type(w) or (
                isinstance(g, (int, float))
                and isinstance(w, (int, float))
                and not isinstance(g, bool)
                and not isinstance(w, bool)
                and float(g) == float(w)
                and c not in ("_cdc_seq", "_cdc_ts")
            ), f"{reader}: row {key(want)} column {c!r}: got {g!r}, want {w!r}"


def pyiceberg_table(t):
    return StaticTable.from_metadata(t["metadata_location"])


_con = None


def duck():
    global _con
    if _con is None:
        import duckdb_extension_avro
        import duckdb_extension_iceberg

        def ext(mod, name):
            pattern = os.path.join(
                os.path.dirname(mod.__file__), "extensions", "*", name + ".duckdb_extension"
            )
            return glob.glob(pattern)[0]

        _con = duckdb.connect(
            config={
                "allow_unsigned_extensions": "true",
                "autoinstall_known_extensions": "false",
            }
        )
        _con.execute(f"LOAD '{ext(duckdb_extension_avro, 'avro')}'")
        _con.execute(f"LOAD '{ext(duckdb_extension_iceberg, 'iceberg')}'")
    return _con


def duck_rows(sql):
    return normalize_arrow(duck().execute(sql).to_arrow_table())


def rs_rows(name, suffix=""):
    if not RS_OUT:
        pytest.skip("DOLAKE_ICEBERG_RS not set")
    with open(os.path.join(RS_OUT, f"{name}{suffix}.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------- pyiceberg


@table_param
def test_pyiceberg_reads_every_row_and_value(name):
    t = BY_NAME[name]
    rows = normalize_arrow(pyiceberg_table(t).scan().to_arrow())
    compare(t, rows, expected_rows(t), "pyiceberg")


@table_param
def test_pyiceberg_time_travel_sees_each_commit(name):
    t = BY_NAME[name]
    tbl = pyiceberg_table(t)
    assert tbl.metadata.current_snapshot_id == t["snapshots"][-1]["snapshot_id"]
    for s in t["snapshots"]:
        n = tbl.scan(snapshot_id=s["snapshot_id"]).to_arrow().num_rows
        assert n == s["total_rows"], s
    # Parent chain (after expiry, a live snapshot may name an expired parent).
    snaps = tbl.metadata.snapshots
    expired = set(t.get("expired_snapshot_ids", []))
    for prev, cur in zip(snaps, snaps[1:]):
        if cur.parent_snapshot_id in expired:
            continue
        assert cur.parent_snapshot_id == prev.snapshot_id
        assert cur.sequence_number == prev.sequence_number + 1


@table_param
def test_pyiceberg_filtered_scans_skip_no_rows(name):
    """Wrong column bounds would make these scans silently drop rows."""
    t = BY_NAME[name]
    tbl = pyiceberg_table(t)
    want = expected_rows(t)
    ts = sorted(r["_cdc_ts"] for r in want)
    pivot = ts[len(ts) // 2]
    got = normalize_arrow(
        tbl.scan(row_filter=GreaterThanOrEqual("_cdc_ts", pivot_iso(pivot))).to_arrow()
    )
    compare(t, got, [r for r in want if r["_cdc_ts"] >= pivot], "pyiceberg ts filter")
    if "id" in tbl.schema().column_names:
        got = normalize_arrow(tbl.scan(row_filter=GreaterThanOrEqual("id", 10)).to_arrow())
        compare(
            t,
            got,
            [r for r in want if r.get("id") is not None and r["id"] >= 10],
            "pyiceberg id filter",
        )


def pivot_iso(micros):
    import datetime

    dt = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        microseconds=micros
    )
    return dt.isoformat()


@table_param
def test_pyiceberg_sees_schema_evolution_and_partitioning(name):
    t = BY_NAME[name]
    tbl = pyiceberg_table(t)
    md = tbl.metadata
    assert md.format_version == 2
    spec = tbl.spec()
    if t["partition_by"] == "none":
        assert spec.is_unpartitioned()
    else:
        assert [f.transform.__class__.__name__ for f in spec.fields] == [
            {"day": "DayTransform", "hour": "HourTransform"}[t["partition_by"]]
        ]
    if name == "orders":
        # `discount` arrived in the second commit: a second schema.
        assert len(md.schemas) == 2
        assert "discount" not in md.schemas[0].column_names
        assert md.schemas[1].find_field("discount").optional


# ---------------------------------------------------------------- DuckDB


@table_param
def test_duckdb_reads_every_row_and_value(name):
    t = BY_NAME[name]
    rows = duck_rows(f"SELECT * FROM iceberg_scan('{t['metadata_path']}')")
    compare(t, rows, expected_rows(t), "duckdb")


@table_param
def test_duckdb_finds_the_latest_version_through_version_hint(name):
    t = BY_NAME[name]
    (n,) = duck().execute(f"SELECT count(*) FROM iceberg_scan('{t['table_dir']}')").fetchone()
    assert n == t["rows"]


@table_param
def test_duckdb_filtered_scan(name):
    t = BY_NAME[name]
    want = expected_rows(t)
    ts = sorted(r["_cdc_ts"] for r in want)
    pivot = ts[len(ts) // 3]
    rows = duck_rows(
        f"SELECT * FROM iceberg_scan('{t['metadata_path']}') "
        f"WHERE _cdc_ts >= make_timestamptz({pivot}::BIGINT)"
    )
    compare(t, rows, [r for r in want if r["_cdc_ts"] >= pivot], "duckdb ts filter")


@table_param
def test_duckdb_metadata_functions(name):
    t = BY_NAME[name]
    snaps = duck().execute(f"SELECT snapshot_id FROM iceberg_snapshots('{t['metadata_path']}')").fetchall()
    assert sorted(s[0] for s in snaps) == sorted(s["snapshot_id"] for s in t["snapshots"])
    # DELETED entries (files a replace snapshot removed) are not live.
    files = duck().execute(
        f"SELECT file_path, record_count FROM iceberg_metadata('{t['metadata_path']}') "
        "WHERE status != 'DELETED'"
    ).fetchall()
    assert sum(r[1] for r in files) == t["rows"]
    # Data files added by expired snapshots are still live.
    assert len(files) == t.get("live_data_files", sum(s["data_files"] for s in t["snapshots"]))


# ---------------------------------------------------------------- iceberg-rust


@table_param
def test_iceberg_rust_reads_every_row_and_value(name):
    t = BY_NAME[name]
    compare(t, rs_rows(name), expected_rows(t), "iceberg-rust")


@table_param
def test_iceberg_rust_time_travel_and_filter(name):
    t = BY_NAME[name]
    rs_rows(name)  # skips without the dumps
    with open(os.path.join(RS_OUT, f"{name}.counts.json")) as f:
        counts = json.load(f)
    assert counts == {str(s["snapshot_id"]): s["total_rows"] for s in t["snapshots"]}
    if os.path.exists(os.path.join(RS_OUT, f"{name}.filtered.jsonl")):
        want = [r for r in expected_rows(t) if r.get("id") is not None and r["id"] >= 10]
        compare(t, rs_rows(name, ".filtered"), want, "iceberg-rust id filter")


# ---------------------------------------------------------------- all readers


@table_param
def test_count_agrees_across_readers(name):
    t = BY_NAME[name]
    (duck_count,) = duck().execute(
        f"SELECT count(*) FROM iceberg_scan('{t['metadata_path']}')"
    ).fetchone()
    py_count = pyiceberg_table(t).scan().to_arrow().num_rows
    rs_count = len(rs_rows(name))
    assert duck_count == py_count == rs_count == t["rows"] == len(expected_rows(t))


@table_param
def test_parquet_files_carry_field_ids_and_utc_micros(name):
    t = BY_NAME[name]
    files = glob.glob(os.path.join(t["table_dir"], "data", "**", "*.parquet"), recursive=True)
    assert files
    md = pyiceberg_table(t).metadata
    ids = {f.name: f.field_id for s in md.schemas for f in s.fields}
    codecs = set()
    for path in files:
        pf = pq.ParquetFile(path)
        for field in pf.schema_arrow:
            assert field.metadata and b"PARQUET:field_id" in field.metadata, field
            assert int(field.metadata[b"PARQUET:field_id"]) == ids[field.name]
        ts = pf.schema_arrow.field("_cdc_ts").type
        assert ts == pa.timestamp("us", tz="UTC") or ts == pa.timestamp("us", tz="+00:00")
        codecs.add(pf.metadata.row_group(0).column(0).compression)
    want = {s["compression"].upper().replace("NONE", "UNCOMPRESSED") for s in t["snapshots"]}
    assert codecs == want


# ---------------------------------------------------------------- expired snapshots

# Tables on which snapshot expiry ran (with the deletes the flush does): the
# readers above read every row of them; these check what the metadata holds.
EXPIRED = [n for n in NAMES if "expired_snapshot_ids" in BY_NAME[n]]


def expired_param(fn):
    return pytest.mark.parametrize("name", EXPIRED)(fn)


@expired_param
def test_expired_table_holds_only_the_kept_snapshots(name):
    t = BY_NAME[name]
    md = pyiceberg_table(t).metadata
    kept = {s["snapshot_id"] for s in t["snapshots"]}
    expired = set(t["expired_snapshot_ids"])
    assert expired and not expired & kept
    assert {s.snapshot_id for s in md.snapshots} == kept
    # snapshot-log names live snapshots only; the tag survived.
    assert md.snapshot_log and {e.snapshot_id for e in md.snapshot_log} <= kept
    assert md.refs["audit"].snapshot_id == t["tagged_snapshot_id"]
    assert md.refs["audit"].snapshot_ref_type == "tag"
    assert md.refs["main"].snapshot_id == md.current_snapshot_id
    # metadata-log is bounded, and every file it names is still there.
    assert len(md.metadata_log) == t["max_metadata_log"]
    for e in md.metadata_log:
        assert os.path.exists(e.metadata_file.removeprefix("file://")), e
    # What the expiry listed was deleted, and nothing live needs it.
    assert t["deleted_files"]
    for path in t["deleted_files"]:
        assert not os.path.exists(path), path
    lists = {s.manifest_list.removeprefix("file://") for s in md.snapshots}
    assert not lists & set(t["deleted_files"])
    # Watermarks: one table property; summaries only name their commit's sources.
    assert json.loads(md.properties["dolake.watermarks"]) == t["watermarks"]
    for s in md.snapshots:
        keys = s.summary.additional_properties
        assert not any(k.startswith("dolake.watermark.") for k in keys), keys
        assert 2 <= sum(k.startswith("dolake.source.") for k in keys) <= 4


@expired_param
def test_expired_snapshots_are_gone_for_every_reader(name):
    t = BY_NAME[name]
    tbl = pyiceberg_table(t)
    gone = t["expired_snapshot_ids"][0]
    assert tbl.metadata.snapshot_by_id(gone) is None
    with pytest.raises(Exception):
        tbl.scan(snapshot_id=gone).to_arrow()
    snaps = duck().execute(
        f"SELECT snapshot_id FROM iceberg_snapshots('{t['metadata_path']}')"
    ).fetchall()
    assert gone not in {s[0] for s in snaps}
    # The tagged old snapshot still reads back as it was.
    tagged = t["tagged_snapshot_id"]
    (want,) = [s["total_rows"] for s in t["snapshots"] if s["snapshot_id"] == tagged]
    assert tbl.scan(snapshot_id=tagged).to_arrow().num_rows == want


# ---------------------------------------------------------------- doubles, bit for bit

# Tables with a `double_bits` file: per `_cdc_seq`, per double column, the
# exact bits the value must read back as (the big-endian hex of the double,
# i.e. Rust's `f64::to_bits` in hex), or null where the value went to the
# overflow column. Hex, so no decimal conversion stands between the expected
# values and the comparison.
DOUBLES = [n for n in NAMES if BY_NAME[n].get("double_bits")]


def doubles_param(fn):
    return pytest.mark.parametrize("name", DOUBLES)(fn)


def expected_bits(t):
    with open(t["double_bits"]) as f:
        return {int(seq): cols for seq, cols in json.load(f).items()}


def bits_of(v):
    if v is None:
        return None
    assert type(v) is float, f"{v!r} is not a float"
    return struct.pack(">d", v).hex()


def float_of(bits):
    return struct.unpack(">d", bytes.fromhex(bits))[0]


def check_bits(t, rows, reader):
    want = expected_bits(t)
    assert len(rows) == len(want), f"{reader}: row count"
    assert {r["_cdc_seq"] for r in rows} == set(want), f"{reader}: rows"
    wrong = []
    checked = 0
    for row in rows:
        for col, w in want[row["_cdc_seq"]].items():
            got = bits_of(row[col])
            checked += w is not None
            if got != w:
                wrong.append(
                    f"_cdc_seq {row['_cdc_seq']} {col}: got {row[col]!r} ({got}), "
                    f"want {None if w is None else float_of(w)!r} ({w})"
                )
    assert not wrong, f"{reader}: {len(wrong)} doubles differ:\n" + "\n".join(wrong[:20])
    assert checked >= len(want), f"{reader}: only {checked} doubles checked"


@doubles_param
def test_pyiceberg_reads_doubles_bit_for_bit(name):
    t = BY_NAME[name]
    check_bits(t, pyiceberg_table(t).scan().to_arrow().to_pylist(), "pyiceberg")


@doubles_param
def test_duckdb_reads_doubles_bit_for_bit(name):
    t = BY_NAME[name]
    tbl = duck().execute(f"SELECT * FROM iceberg_scan('{t['metadata_path']}')").to_arrow_table()
    check_bits(t, tbl.to_pylist(), "duckdb")


@doubles_param
def test_iceberg_rust_reads_doubles_bit_for_bit(name):
    """Through the reader's JSON dump: shortest round-trip text, which
    Python's float parsing reads back exactly."""
    t = BY_NAME[name]
    check_bits(t, rs_rows(name), "iceberg-rust")


def double_pivots(t, col):
    vals = sorted(
        float_of(c[col]) for c in expected_bits(t).values() if c[col] is not None
    )
    picks = [vals[len(vals) // 2], vals[len(vals) // 10], vals[-len(vals) // 10], 5e-324]
    return [p for p in picks if p != 0.0]


@doubles_param
def test_filtered_scans_on_doubles_skip_no_rows(name):
    """Wrong double bounds in the manifests would make these scans drop rows."""
    t = BY_NAME[name]
    want = expected_bits(t)
    tbl = pyiceberg_table(t)
    for col in ("js", "e17"):
        value = {s: float_of(c[col]) for s, c in want.items() if c[col] is not None}
        for pivot in double_pivots(t, col):
            ge = sorted(s for s, v in value.items() if v >= pivot)
            lt = sorted(s for s, v in value.items() if v < pivot)
            for flt, exp in ((GreaterThanOrEqual(col, pivot), ge), (LessThan(col, pivot), lt)):
                got = tbl.scan(row_filter=flt, selected_fields=("_cdc_seq",)).to_arrow()
                assert sorted(got.column("_cdc_seq").to_pylist()) == exp, f"pyiceberg {flt}"
            for op, exp in ((">=", ge), ("<", lt)):
                rows = duck().execute(
                    f"SELECT _cdc_seq FROM iceberg_scan('{t['metadata_path']}') "
                    f"WHERE {col} {op} ?",
                    [pivot],
                ).fetchall()
                assert sorted(r[0] for r in rows) == exp, f"duckdb {col} {op} {pivot!r}"


# ---------------------------------------------------------------- the dead-letter table

# Listed apart in tables.json (`dead_letter_tables`): its columns are not the
# changelog's. Every row must read back exactly: the event's JSON text
# (odd unicode, numbers no double or long holds) byte for byte, the u64
# sequence numbers as exact decimals.
with open(os.path.join(OUT, "tables.json")) as f:
    DEAD = {t["name"]: t for t in json.load(f).get("dead_letter_tables", [])}
DEAD_COLUMNS = ["table_name", "source_id", "batch_seq", "sequence", "rejected_at", "reason", "raw"]


def dead_param(fn):
    return pytest.mark.parametrize("name", sorted(DEAD))(fn)


def dead_rows(rows):
    """Rows as comparable tuples: decimals as ints, timestamps as micros."""
    import decimal

    out = []
    for r in rows:
        assert set(r) == set(DEAD_COLUMNS), sorted(r)
        row = []
        for c in DEAD_COLUMNS:
            v = r[c]
            if c in ("batch_seq", "sequence"):
                assert isinstance(v, decimal.Decimal), f"{c}: {v!r}"
                assert v == v.to_integral_value()
                v = int(v)
            row.append(v)
        out.append(tuple(row))
    return sorted(out, key=lambda r: (r[3], r[2], r[0], r[1], r[6]))


def dead_expected(t):
    import decimal

    with open(t["expected"]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for r in rows:
        r["batch_seq"] = decimal.Decimal(r["batch_seq"])
        r["sequence"] = decimal.Decimal(r["sequence"])
    return dead_rows(rows)


def check_dead(t, got, reader):
    want = dead_expected(t)
    got = dead_rows(got)
    assert len(got) == len(want), f"{reader}: row count"
    for g, w in zip(got, want):
        for c, gv, wv in zip(DEAD_COLUMNS, g, w):
            assert gv == wv and type(gv) is type(wv), (
                f"{reader}: sequence {w[3]} column {c}: got {gv!r:.200}, want {wv!r:.200}"
            )


@dead_param
def test_pyiceberg_reads_dead_letters_exactly(name):
    t = DEAD[name]
    check_dead(t, normalize_arrow(pyiceberg_table(t).scan().to_arrow()), "pyiceberg")


@dead_param
def test_duckdb_reads_dead_letters_exactly(name):
    t = DEAD[name]
    check_dead(t, duck_rows(f"SELECT * FROM iceberg_scan('{t['metadata_path']}')"), "duckdb")
    (n,) = duck().execute(f"SELECT count(*) FROM iceberg_scan('{t['table_dir']}')").fetchone()
    assert n == t["rows"]


@dead_param
def test_dead_letter_table_metadata(name):
    from pyiceberg.types import DecimalType, StringType, TimestamptzType

    t = DEAD[name]
    tbl = pyiceberg_table(t)
    md = tbl.metadata
    assert md.format_version == 2
    assert md.properties["dolake.table-kind"] == "dead-letter"
    assert tbl.spec().is_unpartitioned()
    fields = tbl.schema().fields
    assert [f.name for f in fields] == DEAD_COLUMNS
    assert all(f.required for f in fields)
    types = {f.name: f.field_type for f in fields}
    assert types["batch_seq"] == DecimalType(20, 0) == types["sequence"]
    assert types["rejected_at"] == TimestamptzType()
    assert types["raw"] == StringType()
    for s in t["snapshots"]:
        assert tbl.scan(snapshot_id=s["snapshot_id"]).to_arrow().num_rows == s["total_rows"]
    # The flush's marks are in every snapshot, carried forward.
    summary = md.current_snapshot().summary
    assert summary["dolake.buffer.epoch-0.row-id"] == "5"
    assert summary["dolake.buffer.epoch-1.row-id"] == "15"


@dead_param
def test_dead_letter_filters_on_sequences_skip_no_rows(name):
    """The decimal bounds in the manifests must not make scans drop rows."""
    t = DEAD[name]
    want = dead_expected(t)
    tbl = pyiceberg_table(t)
    for pivot in (2**63, 2**64 - 1, 1000, 1, 0):
        exp = sorted(r[3] for r in want if r[3] >= pivot)
        got = tbl.scan(row_filter=GreaterThanOrEqual("sequence", pivot)).to_arrow()
        assert sorted(int(v) for v in got.column("sequence").to_pylist()) == exp, pivot
        rows = duck().execute(
            f"SELECT sequence FROM iceberg_scan('{t['metadata_path']}') "
            f"WHERE sequence >= {pivot}::DECIMAL(20, 0)"
        ).fetchall()
        assert sorted(int(r[0]) for r in rows) == exp, f"duckdb {pivot}"
    got = tbl.scan(row_filter=GreaterThanOrEqual("table_name", "t2")).to_arrow()
    assert sorted(got.column("table_name").to_pylist()) == sorted(
        r[0] for r in want if r[0] >= "t2"
    )


@dead_param
def test_dead_letter_parquet_files(name):
    t = DEAD[name]
    files = glob.glob(os.path.join(t["table_dir"], "data", "*.parquet"))
    assert files
    ids = {f.name: f.field_id for f in pyiceberg_table(t).schema().fields}
    for path in files:
        schema = pq.ParquetFile(path).schema_arrow
        assert [f.name for f in schema] == DEAD_COLUMNS
        for field in schema:
            assert int(field.metadata[b"PARQUET:field_id"]) == ids[field.name]
            assert not field.nullable
        assert schema.field("sequence").type == pa.decimal128(20, 0)
        assert schema.field("rejected_at").type in (
            pa.timestamp("us", tz="UTC"),
            pa.timestamp("us", tz="+00:00"),
        )


# ---------------------------------------------------------------- maintained tables

# Tables DoLake's maintenance ran on (compaction, manifest merging, expiry,
# orphan cleanup): the generic tests above read every row of them and every
# live snapshot; these check what maintenance promises readers.
MAINTAINED = [n for n in NAMES if "replace_snapshot_ids" in BY_NAME[n]]


def maintained_param(fn):
    return pytest.mark.parametrize("name", MAINTAINED)(fn)


@maintained_param
def test_maintained_table_plans_few_files(name):
    t = BY_NAME[name]
    tbl = pyiceberg_table(t)
    tasks = list(tbl.scan().plan_files())
    assert len(tasks) == t["live_data_files"]
    assert len(tasks) < t["commits"] // 5, f"{len(tasks)} files for {t['commits']} commits"
    assert sum(task.file.record_count for task in tasks) == t["rows"]
    for task in tasks:
        assert os.path.exists(task.file.file_path.removeprefix("file://"))
        assert not task.delete_files


@maintained_param
def test_replace_snapshots_change_no_rows(name):
    t = BY_NAME[name]
    tbl = pyiceberg_table(t)
    by_id = {s.snapshot_id: s for s in tbl.metadata.snapshots}
    assert t["replace_snapshot_ids"]
    for sid in t["replace_snapshot_ids"]:
        s = by_id[sid]
        assert s.summary.operation.value == "replace"
        assert s.summary.additional_properties["dolake.maintenance"] in ("compaction", "merge-manifests")
        rows = normalize_arrow(tbl.scan(snapshot_id=sid).to_arrow())
        if s.parent_snapshot_id in by_id:
            parent = normalize_arrow(tbl.scan(snapshot_id=s.parent_snapshot_id).to_arrow())
            key = lambda r: (r["_cdc_source"], r["_cdc_seq"])  # noqa: E731
            assert sorted(rows, key=key) == sorted(parent, key=key)
        # DuckDB at the same snapshot: the same count.
        (n,) = duck().execute(
            f"SELECT count(*) FROM iceberg_scan('{t['metadata_path']}', snapshot_from_id = {sid})"
        ).fetchone()
        assert n == len(rows)


@maintained_param
def test_duckdb_lists_only_live_files(name):
    t = BY_NAME[name]
    files = duck().execute(
        f"SELECT file_path, status, record_count FROM iceberg_metadata('{t['metadata_path']}')"
    ).fetchall()
    live = [f for f in files if f[1] != "DELETED"]
    assert len(live) == t["live_data_files"]
    assert sum(f[2] for f in live) == t["rows"]
    for path, _, _ in live:
        assert os.path.exists(path.removeprefix("file://")), path


# ---------------------------------------------------------------- current-state tables

# Listed apart in tables.json (`current_state_tables`): one live row per key,
# UPDATE and DELETE applied with position deletes. Every reader must return
# exactly the model's rows (the last image of every live key).
with open(os.path.join(OUT, "tables.json")) as f:
    CURRENT = {t["name"]: t for t in json.load(f).get("current_state_tables", [])}


def current_param(fn):
    return pytest.mark.parametrize("name", sorted(CURRENT))(fn)


def check_current(t, rows, reader):
    with open(t["expected"]) as f:
        want = {r["id"]: r for r in (json.loads(line) for line in f if line.strip())}
    got = {}
    for r in rows:
        k = r["_cdc_row_id"]
        assert k not in got, f"{reader}: key {k} appears twice"
        assert r["_cdc_op"] in ("INSERT", "UPDATE"), f"{reader}: {r['_cdc_op']}"
        assert r.get("_cdc_before") is None, reader
        got[k] = {c: r[c] for c in t["columns"]}
    assert len(got) == t["rows"] == len(want), f"{reader}: {len(got)} rows, want {len(want)}"
    assert sorted(got) == sorted(want), f"{reader}: keys differ"
    for k, w in want.items():
        for c in t["columns"]:
            g = got[k][c]
            assert g == w[c] and type(g) is type(w[c]), (
                f"{reader}: {k}.{c}: got {g!r}, want {w[c]!r}"
            )


@current_param
def test_pyiceberg_reads_current_state_exactly(name):
    t = CURRENT[name]
    check_current(t, normalize_arrow(pyiceberg_table(t).scan().to_arrow()), "pyiceberg")


@current_param
def test_duckdb_reads_current_state_exactly(name):
    t = CURRENT[name]
    rows = duck_rows(f"SELECT * FROM iceberg_scan('{t['metadata_location']}')")
    check_current(t, rows, "duckdb")
    (count,) = duck().execute(
        f"SELECT count(*) FROM iceberg_scan('{t['metadata_location']}')"
    ).fetchone()
    assert count == t["rows"]


@current_param
def test_iceberg_rust_reads_current_state_exactly(name):
    t = CURRENT[name]
    check_current(t, rs_rows(f"{t['namespace']}.{name}"), "iceberg-rust")


@current_param
def test_current_state_tables_hold_one_delete_file_per_data_file(name):
    t = CURRENT[name]
    table = pyiceberg_table(t)
    props = table.metadata.properties
    assert props["dolake.table-kind"] == "current-state"
    assert props["dolake.cdc-table"] == name
    tasks = list(table.scan().plan_files())
    with_deletes = [task for task in tasks if task.delete_files]
    assert with_deletes, "the stream deletes rows of earlier files"
    for task in tasks:
        assert len(task.delete_files) <= 1, task.file.file_path
        for d in task.delete_files:
            # File-scoped: its file_path column names exactly this data file.
            rows = pq.read_table(d.file_path.removeprefix("file://")).to_pylist()
            assert {r["file_path"] for r in rows} == {task.file.file_path}
            positions = [r["pos"] for r in rows]
            assert positions == sorted(set(positions))
    assert sum(len(task.delete_files) for task in tasks) == t["delete_files"]
