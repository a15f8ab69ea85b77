//! Reads the DoLake test tables with apache iceberg-rust and dumps them.
//!
//! Usage: `iceberg-rs-reader <tables.json> <out-dir>`. For each table of
//! `tables.json` (written by `cargo test --test readers`), loads the table from
//! its metadata file with `StaticTable` and the local file IO, scans it to
//! Arrow and writes:
//! - `<out>/<table>.jsonl`: every row (timestamps as microseconds);
//! - `<out>/<table>.counts.json`: rows per snapshot (time travel);
//! - `<out>/<table>.filtered.jsonl`: rows of `id >= 10` when the table has an
//!   `id` column (a filtered scan, which prunes with the manifests' bounds);
//! - for each of `current_state_tables`, `<out>/<namespace>.<table>.jsonl`:
//!   its live rows (position deletes applied).
//!
//! Comparison with the expected rows is done by the pytest suite, so all
//! three readers are held to the same check.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use iceberg::expr::Reference;
use iceberg::io::FileIO;
use iceberg::spec::Datum;
use iceberg::table::StaticTable;
use iceberg::TableIdent;
use serde_json::Value;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Timestamps become plain microseconds so that every reader's output
/// compares the same way.
fn normalize(batch: &RecordBatch) -> Res<RecordBatch> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if matches!(f.data_type(), DataType::Timestamp(_, _)) {
            columns.push(arrow_cast::cast(c, &DataType::Int64)?);
            fields.push(Field::new(f.name(), DataType::Int64, f.is_nullable()));
        } else {
            columns.push(c.clone());
            fields.push(f.as_ref().clone());
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

fn to_jsonl(batches: &[RecordBatch]) -> Res<Vec<u8>> {
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow_json::writer::LineDelimited>(Vec::new());
    for b in batches {
        writer.write(&normalize(b)?)?;
    }
    writer.finish()?;
    Ok(writer.into_inner())
}

async fn scan(
    table: &StaticTable,
    snapshot: Option<i64>,
    filter: Option<iceberg::expr::Predicate>,
) -> Res<Vec<RecordBatch>> {
    let mut builder = table.scan().select_all();
    if let Some(id) = snapshot {
        builder = builder.snapshot_id(id);
    }
    if let Some(f) = filter {
        builder = builder.with_filter(f);
    }
    let stream = builder.build()?.to_arrow().await?;
    Ok(stream.try_collect().await?)
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return Err("usage: iceberg-rs-reader <tables.json> <out-dir>".into());
    }
    let spec: Value = serde_json::from_slice(&std::fs::read(&args[1])?)?;
    let out = std::path::Path::new(&args[2]);
    std::fs::create_dir_all(out)?;
    for t in spec["tables"].as_array().ok_or("no tables")? {
        let name = t["name"].as_str().ok_or("no name")?;
        let location = t["metadata_location"].as_str().ok_or("no location")?;
        let ident = TableIdent::from_strs([t["namespace"].as_str().unwrap_or("cdc"), name])?;
        let table = StaticTable::from_metadata_file(location, ident, FileIO::new_with_fs()).await?;
        let has_id = table
            .metadata()
            .current_schema()
            .field_by_name("id")
            .is_some();

        let batches = scan(&table, None, None).await?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        std::fs::write(out.join(format!("{name}.jsonl")), to_jsonl(&batches)?)?;

        let mut counts = BTreeMap::new();
        for s in t["snapshots"].as_array().ok_or("no snapshots")? {
            let id = s["snapshot_id"].as_i64().ok_or("no snapshot id")?;
            let b = scan(&table, Some(id), None).await?;
            counts.insert(
                id.to_string(),
                b.iter().map(RecordBatch::num_rows).sum::<usize>(),
            );
        }
        std::fs::write(
            out.join(format!("{name}.counts.json")),
            serde_json::to_vec_pretty(&counts)?,
        )?;

        if has_id {
            let filter = Reference::new("id").greater_than_or_equal_to(Datum::long(10));
            let b = scan(&table, None, Some(filter)).await?;
            std::fs::write(out.join(format!("{name}.filtered.jsonl")), to_jsonl(&b)?)?;
        }
        println!("iceberg-rs: {name}: {rows} rows, per snapshot {counts:?}");
    }
    // Current-state tables (position deletes): every live row, as
    // `<out>/<namespace>.<table>.jsonl`.
    for t in spec["current_state_tables"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = t["name"].as_str().ok_or("no name")?;
        let namespace = t["namespace"].as_str().ok_or("no namespace")?;
        let location = t["metadata_location"].as_str().ok_or("no location")?;
        let ident = TableIdent::from_strs([namespace, name])?;
        let table = StaticTable::from_metadata_file(location, ident, FileIO::new_with_fs()).await?;
        let batches = scan(&table, None, None).await?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        std::fs::write(
            out.join(format!("{namespace}.{name}.jsonl")),
            to_jsonl(&batches)?,
        )?;
        println!("iceberg-rs: {namespace}.{name}: {rows} rows");
    }
    Ok(())
}
