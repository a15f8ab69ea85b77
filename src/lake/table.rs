//! Where a table's objects live, and loading a table's current state from
//! the objects the flush pipeline reads back from R2.
//!
//! Object keys are relative to `r2BasePath`: `{namespace}/{table}/data/...`
//! and `{namespace}/{table}/metadata/...`. Locations written into metadata
//! are full URIs below the table's `location`
//! (`{warehouseLocation}/{namespace}/{table}` for tables DoLake creates).

use super::avro::{read_manifest_list, ManifestFile};
use super::metadata::{parse_version_hint, TableMetadata};
use crate::error::{Error, ErrorKind, Result};

/// Longest table or namespace name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Prefix of the names of DoLake's own tables (such as the dead-letter table
/// [`REJECTED_TABLE`](super::REJECTED_TABLE)), refused for tables named by
/// events in any letter case.
pub const RESERVED_TABLE_PREFIX: &str = "_dolake";

/// The rule for table names that come from events (the one intake applies):
/// 1 to 128 ASCII letters, digits, `_` and `-`, not starting with
/// [`RESERVED_TABLE_PREFIX`] in any letter case.
///
/// A name is one segment of an object key and of every location written
/// into metadata (URIs that readers parse), and an Iceberg identifier. So
/// nothing that needs escaping anywhere: no `/` or `\` (they would leave
/// the table's prefix), no `%`, `?`, `#`, spaces or non-ASCII characters
/// (readers parse locations as URIs), and no `.` at all: `..` escapes a
/// prefix, and REST catalogs and SQL engines read `a.b` as table `b` in
/// namespace `a`. The same characters as the `namespace` option allows.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    validate_key_segment(what, name)?;
    let problem = if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        format!("must hold only ASCII letters, digits, `_` and `-`, got {c:?}")
    } else if name
        .get(..RESERVED_TABLE_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_TABLE_PREFIX))
    {
        format!(
            "must not start with `{RESERVED_TABLE_PREFIX}`: it is reserved for DoLake's own tables"
        )
    } else {
        return Ok(());
    };
    Err(Error::new(
        ErrorKind::InvalidFormat,
        format!("{what} name {name:?} {problem}"),
    ))
}

/// What a table or namespace name must be to be one key segment that stays
/// inside its prefix: not empty, at most 128 bytes, without `/`, `\`, `..`
/// or control characters, and not `.`. [`TablePaths`] checks only this, so
/// that tables named under this looser, older rule (and DoLake's own) keep
/// working; names from events must pass [`validate_name`].
pub fn validate_key_segment(what: &str, name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("must not be empty".to_string())
    } else if name.len() > MAX_NAME_BYTES {
        Some(format!(
            "must be at most {MAX_NAME_BYTES} bytes, got {}",
            name.len()
        ))
    } else if name.contains('/') || name.contains('\\') {
        Some("must not contain `/` or `\\`".to_string())
    } else if name == "." || name.contains("..") {
        Some("must not be `.` or contain `..`".to_string())
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters".to_string())
    } else {
        None
    };
    match problem {
        Some(p) => Err(Error::new(
            ErrorKind::InvalidFormat,
            format!("{what} name {name:?} {p}"),
        )),
        None => Ok(()),
    }
}

/// The object keys of one table, relative to `r2BasePath`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePaths {
    prefix: String,
}

impl TablePaths {
    /// The keys of table `table` in `namespace` (both checked with
    /// [`validate_key_segment`]).
    pub fn new(namespace: &str, table: &str) -> Result<Self> {
        validate_key_segment("namespace", namespace)?;
        validate_key_segment("table", table)?;
        Ok(Self {
            prefix: format!("{namespace}/{table}"),
        })
    }

    /// `{namespace}/{table}`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{namespace}/{table}/metadata/version-hint.text`.
    pub fn version_hint_key(&self) -> String {
        format!("{}/metadata/version-hint.text", self.prefix)
    }

    /// `{namespace}/{table}/metadata/v{version}.metadata.json`.
    pub fn metadata_key(&self, version: u64) -> String {
        format!("{}/metadata/v{version}.metadata.json", self.prefix)
    }

    /// The key of an object at `location` inside the table whose location is
    /// `table_location`; `None` when the location is outside the table.
    pub fn key_for_location(&self, table_location: &str, location: &str) -> Option<String> {
        let rest = location
            .strip_prefix(table_location.trim_end_matches('/'))?
            .strip_prefix('/')?;
        if rest
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return None;
        }
        Some(format!("{}/{rest}", self.prefix))
    }

    /// The key of the current snapshot's manifest list, if there is a
    /// current snapshot.
    pub fn manifest_list_key(&self, metadata: &TableMetadata) -> Result<Option<String>> {
        let Some(snapshot) = metadata.current_snapshot() else {
            return Ok(None);
        };
        self.key_for_location(&metadata.location, &snapshot.manifest_list)
            .map(Some)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Lake,
                    format!(
                        "manifest list {} is outside the table location {}",
                        snapshot.manifest_list, metadata.location
                    ),
                )
            })
    }
}

/// What DoLake needs of a table to commit to it: the number of its current
/// metadata file, the metadata, and the current snapshot's manifest list.
#[derive(Debug, Clone, PartialEq)]
pub struct TableState {
    /// N of the current `v{N}.metadata.json`.
    pub version: u64,
    /// Its content.
    pub metadata: TableMetadata,
    /// The entries of the current snapshot's manifest list (empty without a
    /// current snapshot).
    pub manifests: Vec<ManifestFile>,
}

impl TableState {
    /// Assembles the state from the bytes of `version-hint.text`, of the
    /// metadata file it names, and of the current snapshot's manifest list
    /// (see [`TablePaths::manifest_list_key`]; `None` only when the table has
    /// no snapshot).
    pub fn from_objects(
        version_hint: &[u8],
        metadata_json: &[u8],
        manifest_list: Option<&[u8]>,
    ) -> Result<Self> {
        let version = parse_version_hint(version_hint)?;
        let metadata = TableMetadata::from_json(metadata_json)?;
        let manifests = match (metadata.current_snapshot_id, manifest_list) {
            (None, _) => Vec::new(),
            (Some(_), Some(bytes)) => read_manifest_list(bytes)?,
            (Some(id), None) => {
                return Err(Error::new(
                    ErrorKind::Lake,
                    format!("the manifest list of current snapshot {id} is needed to commit"),
                ))
            }
        };
        Ok(Self {
            version,
            metadata,
            manifests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in [
            "",
            "a/b",
            "..",
            "a..b",
            ".",
            "a\\b",
            "tab\tname",
            "nul\0",
            &"x".repeat(129),
        ] {
            let e = TablePaths::new("default", bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidFormat, "{bad:?}");
            assert!(e.message().starts_with("table name"), "{}", e.message());
            let e = validate_name("table", bad).unwrap_err();
            assert!(e.message().starts_with("table name"), "{}", e.message());
        }
        assert!(validate_name("table", "../x")
            .unwrap_err()
            .message()
            .contains("must not contain `/`"));
        for good in [
            "users",
            "order-items",
            "Order_Items_2",
            "_private",
            "-",
            "dolake_x",
            &"x".repeat(128),
        ] {
            validate_name("table", good).unwrap();
            TablePaths::new("default", good).unwrap();
        }
        assert!(TablePaths::new("a/b", "t").is_err());
    }

    #[test]
    fn names_readers_would_have_to_escape_or_split_are_refused() {
        for bad in [
            ".hidden",
            "a.b",
            "sp ace",
            "per%20cent",
            "q?x",
            "h#x",
            "Ünïcødé_表",
            "e\u{301}",
            "emoji😀",
        ] {
            let e = validate_name("table", bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidFormat, "{bad:?}");
            assert!(
                e.message().contains("only ASCII letters"),
                "{}",
                e.message()
            );
            // Tables named under the older rule keep their keys.
            TablePaths::new("default", bad).unwrap();
        }
    }

    #[test]
    fn dolake_names_are_reserved_for_dolake() {
        for reserved in [
            "_dolake",
            "_dolake_rejected",
            "_DoLake_x",
            "_DOLAKEsomething",
        ] {
            let e = validate_name("table", reserved).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidFormat);
            assert!(e.message().contains("reserved"), "{}", e.message());
            // DoLake itself writes them.
            TablePaths::new("default", reserved).unwrap();
        }
        validate_name("table", "_dolak").unwrap();
        validate_name("table", "x_dolake").unwrap();
    }

    #[test]
    fn keys_and_locations() {
        let p = TablePaths::new("ns", "users").unwrap();
        assert_eq!(p.version_hint_key(), "ns/users/metadata/version-hint.text");
        assert_eq!(p.metadata_key(3), "ns/users/metadata/v3.metadata.json");
        let loc = "s3://bucket/wh/ns/users";
        assert_eq!(
            p.key_for_location(loc, "s3://bucket/wh/ns/users/metadata/snap-1.avro"),
            Some("ns/users/metadata/snap-1.avro".to_string())
        );
        assert_eq!(p.key_for_location(loc, "s3://bucket/wh/ns/users2/x"), None);
        assert_eq!(
            p.key_for_location(loc, "s3://bucket/wh/ns/users/../x"),
            None
        );
        assert_eq!(p.key_for_location(loc, "s3://other/x"), None);
    }
}
