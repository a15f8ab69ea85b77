//! Manifest entries as types, and the manifest reader.
//!
//! Appends write only ADDED entries; maintenance (manifest merging and
//! compaction) rewrites manifests, so it writes EXISTING entries (a file
//! carried into a new manifest, keeping the snapshot and sequence numbers it
//! was added with) and DELETED entries (a file a `replace` snapshot removed).
//! The spec lets an ADDED entry leave its snapshot id and sequence numbers
//! null, to be inherited from the manifest list entry; [`read_manifest`]
//! resolves that inheritance, so an entry read here always has them.

use apache_avro::types::Value as Avro;

use super::avro::{unwrap_union, DataFile, ManifestFile, Rec};
use crate::error::{Error, ErrorKind, Result};

/// `status` of a manifest entry (spec field 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryStatus {
    /// Carried from an earlier manifest; added by an earlier snapshot.
    Existing = 0,
    /// Added by the snapshot that wrote the manifest.
    Added = 1,
    /// Removed by the snapshot that wrote the manifest.
    Deleted = 2,
}

impl EntryStatus {
    fn from_i64(v: i64) -> Option<Self> {
        match v {
            0 => Some(Self::Existing),
            1 => Some(Self::Added),
            2 => Some(Self::Deleted),
            _ => None,
        }
    }

    /// Whether the file is part of the snapshot (ADDED or EXISTING).
    pub fn is_live(self) -> bool {
        self != Self::Deleted
    }
}

/// A manifest entry (spec: `manifest_entry`, ids 0-4).
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestEntry {
    /// Added, existing or deleted.
    pub status: EntryStatus,
    /// The snapshot that added (or, for DELETED, removed) the file.
    pub snapshot_id: Option<i64>,
    /// The data sequence number of the file.
    pub sequence_number: Option<i64>,
    /// The sequence number of the snapshot that added the file.
    pub file_sequence_number: Option<i64>,
    /// The data file.
    pub file: DataFile,
}

impl ManifestEntry {
    /// An ADDED entry of `snapshot_id` whose sequence numbers are inherited
    /// from the manifest list entry (written as null).
    pub fn added(snapshot_id: i64, file: DataFile) -> Self {
        Self {
            status: EntryStatus::Added,
            snapshot_id: Some(snapshot_id),
            sequence_number: None,
            file_sequence_number: None,
            file,
        }
    }

    /// This live entry carried into a new manifest: EXISTING, with its
    /// snapshot id and sequence numbers written out (they can no longer be
    /// inherited from the new manifest's list entry).
    pub fn existing(&self) -> Self {
        Self {
            status: EntryStatus::Existing,
            ..self.clone()
        }
    }

    /// This entry removed by `snapshot_id`: DELETED, keeping its sequence
    /// numbers (the spec wants the data sequence number of the removed file).
    pub fn deleted(&self, snapshot_id: i64) -> Self {
        Self {
            status: EntryStatus::Deleted,
            snapshot_id: Some(snapshot_id),
            ..self.clone()
        }
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::InvalidFormat,
        format!("manifest is not valid: {}", msg.into()),
    )
}

fn id_map<T>(
    r: &Rec<'_>,
    name: &str,
    value: impl Fn(&Avro) -> Option<T>,
) -> Result<std::collections::BTreeMap<i32, T>> {
    let mut out = std::collections::BTreeMap::new();
    match r.get(&[name]) {
        None | Some(Avro::Null) => {}
        Some(Avro::Array(items)) => {
            for item in items {
                let Avro::Record(kv) = item else {
                    return Err(bad(format!("`{name}` holds a non-record")));
                };
                let kv = Rec(kv);
                let key = match kv.get(&["key"]) {
                    Some(Avro::Int(k)) => *k,
                    _ => return Err(bad(format!("`{name}` has a key that is not an int"))),
                };
                let v = kv
                    .get(&["value"])
                    .and_then(&value)
                    .ok_or_else(|| bad(format!("`{name}` has a value of the wrong type")))?;
                out.insert(key, v);
            }
        }
        Some(_) => return Err(bad(format!("`{name}` is not an array"))),
    }
    Ok(out)
}

fn data_file(r: &Rec<'_>) -> Result<DataFile> {
    let content = match r.get(&["content"]) {
        None | Some(Avro::Null) => 0,
        Some(_) => r.long(&["content"])?,
    };
    if content != 0 && content != 1 {
        return Err(bad(format!(
            "content {content} (equality deletes) is not read by DoLake's maintenance"
        )));
    }
    let file_path = match r.get(&["file_path"]) {
        Some(Avro::String(s)) => s.clone(),
        _ => return Err(bad("`file_path` missing")),
    };
    let partition = match r.get(&["partition"]) {
        Some(Avro::Record(fields)) => fields
            .iter()
            .map(|(_, v)| match unwrap_union(v) {
                Avro::Null => Ok(None),
                Avro::Date(d) | Avro::Int(d) => Ok(Some(*d)),
                _ => Err(bad("a partition value is not an int or a date")),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(bad("`partition` missing")),
    };
    let long = |v: &Avro| match v {
        Avro::Long(v) => Some(*v),
        Avro::Int(v) => Some(i64::from(*v)),
        _ => None,
    };
    let bytes = |v: &Avro| match v {
        Avro::Bytes(b) => Some(b.clone()),
        _ => None,
    };
    Ok(DataFile {
        content: content as i32,
        file_path,
        partition,
        record_count: r.long(&["record_count"])?,
        file_size_in_bytes: r.long(&["file_size_in_bytes"])?,
        column_sizes: id_map(r, "column_sizes", long)?,
        value_counts: id_map(r, "value_counts", long)?,
        null_value_counts: id_map(r, "null_value_counts", long)?,
        nan_value_counts: id_map(r, "nan_value_counts", long)?,
        lower_bounds: id_map(r, "lower_bounds", bytes)?,
        upper_bounds: id_map(r, "upper_bounds", bytes)?,
    })
}

fn opt_long(r: &Rec<'_>, name: &str) -> Result<Option<i64>> {
    match r.get(&[name]) {
        None | Some(Avro::Null) => Ok(None),
        Some(Avro::Long(v)) => Ok(Some(*v)),
        Some(Avro::Int(v)) => Ok(Some(i64::from(*v))),
        Some(_) => Err(bad(format!("`{name}` is not a long"))),
    }
}

/// Reads the entries of the data manifest `listed` (its manifest list
/// entry) from `bytes`, with the spec's inheritance applied: a null snapshot
/// id is the manifest's `added_snapshot_id`, and the null sequence numbers of
/// an ADDED entry are the manifest's `sequence_number`.
pub fn read_manifest(bytes: &[u8], listed: &ManifestFile) -> Result<Vec<ManifestEntry>> {
    let reader = apache_avro::Reader::new(bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for value in reader {
        let value = value.map_err(|e| bad(e.to_string()))?;
        let Avro::Record(fields) = value else {
            return Err(bad("an entry is not a record"));
        };
        let r = Rec(&fields);
        let status = EntryStatus::from_i64(r.long(&["status"]).map_err(|_| bad("no status"))?)
            .ok_or_else(|| bad("unknown status"))?;
        let Some(Avro::Record(df)) = r.get(&["data_file"]) else {
            return Err(bad("`data_file` missing"));
        };
        let inherit = |v: Option<i64>| match (v, status) {
            (None, EntryStatus::Added) => Some(listed.sequence_number),
            (v, _) => v,
        };
        out.push(ManifestEntry {
            status,
            snapshot_id: Some(opt_long(&r, "snapshot_id")?.unwrap_or(listed.added_snapshot_id)),
            sequence_number: inherit(opt_long(&r, "sequence_number")?),
            file_sequence_number: inherit(opt_long(&r, "file_sequence_number")?),
            file: data_file(&Rec(df))?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::lake::avro::{write_manifest, write_manifest_entries};
    use crate::lake::metadata::{PartitionField, PartitionSpec, Schema};

    fn spec() -> PartitionSpec {
        PartitionSpec {
            spec_id: 0,
            fields: vec![PartitionField {
                name: "_cdc_ts_day".into(),
                transform: crate::lake::metadata::Transform::Day,
                source_id: 3,
                field_id: 1000,
            }],
        }
    }

    fn file(name: &str, day: Option<i32>) -> DataFile {
        DataFile {
            content: 0,
            file_path: format!("file:///w/t/data/{name}.parquet"),
            partition: vec![day],
            record_count: 5,
            file_size_in_bytes: 777,
            column_sizes: BTreeMap::from([(1, 10)]),
            value_counts: BTreeMap::from([(1, 5), (2, 5)]),
            null_value_counts: BTreeMap::from([(1, 0), (2, 1)]),
            nan_value_counts: BTreeMap::from([(4, 0)]),
            lower_bounds: BTreeMap::from([(2, 1_i64.to_le_bytes().to_vec())]),
            upper_bounds: BTreeMap::from([(2, 5_i64.to_le_bytes().to_vec())]),
        }
    }

    fn listed(seq: i64, snapshot: i64) -> ManifestFile {
        ManifestFile {
            manifest_path: "m".into(),
            manifest_length: 1,
            partition_spec_id: 0,
            content: 0,
            sequence_number: seq,
            min_sequence_number: seq,
            added_snapshot_id: snapshot,
            added_files_count: 0,
            existing_files_count: 0,
            deleted_files_count: 0,
            added_rows_count: 0,
            existing_rows_count: 0,
            deleted_rows_count: 0,
            partitions: None,
            key_metadata: None,
        }
    }

    #[test]
    fn added_entries_inherit_from_the_list_entry() {
        let schema = Schema::new(0, crate::lake::changelog::base_fields());
        let files = [file("a", Some(20_000)), file("b", None)];
        let bytes = write_manifest(&schema, &spec(), 42, &files, [3; 16]).unwrap();
        let entries = read_manifest(&bytes, &listed(7, 42)).unwrap();
        assert_eq!(entries.len(), 2);
        for (e, f) in entries.iter().zip(&files) {
            assert_eq!(e.status, EntryStatus::Added);
            assert_eq!(e.snapshot_id, Some(42));
            assert_eq!(e.sequence_number, Some(7));
            assert_eq!(e.file_sequence_number, Some(7));
            assert_eq!(&e.file, f);
        }
    }

    #[test]
    fn every_status_round_trips_with_explicit_numbers() {
        let schema = Schema::new(0, crate::lake::changelog::base_fields());
        let a = ManifestEntry {
            status: EntryStatus::Added,
            snapshot_id: Some(1),
            sequence_number: Some(1),
            file_sequence_number: Some(1),
            file: file("a", Some(1)),
        };
        let entries = vec![
            a.existing(),
            a.deleted(9),
            ManifestEntry::added(9, file("c", None)),
        ];
        let bytes = write_manifest_entries(&schema, &spec(), &entries, [1; 16]).unwrap();
        let back = read_manifest(&bytes, &listed(5, 9)).unwrap();
        assert_eq!(back[0], a.existing());
        assert_eq!(back[0].status, EntryStatus::Existing);
        assert_eq!(back[1].status, EntryStatus::Deleted);
        assert_eq!(back[1].snapshot_id, Some(9));
        assert_eq!(
            back[1].sequence_number,
            Some(1),
            "a deleted file keeps its sequence number"
        );
        assert_eq!(back[2].sequence_number, Some(5));
        assert!(!back[1].status.is_live() && back[0].status.is_live());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [&b""[..], b"Obj\x01", b"not avro at all", &[0xff; 64]] {
            assert_eq!(
                read_manifest(input, &listed(1, 1)).unwrap_err().kind(),
                ErrorKind::InvalidFormat
            );
        }
    }
}
