//! Parquet data files and Iceberg v2 metadata for one commit (see issue 3).
