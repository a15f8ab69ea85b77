//! Admission of CDC batches.
