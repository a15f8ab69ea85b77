//! Column statistics of a data file and the spec's single-value binary
//! encoding of bounds (Iceberg spec, appendix D).
//!
//! Bounds must never be wrong: a reader skips a file whose bounds exclude a
//! filter's value. So doubles leave NaN out of bounds (and count it instead),
//! and string bounds are left out when an exact or safely truncated bound
//! cannot be given.

use std::cmp::Ordering;

/// Longest string bound written, in bytes. A longer lower bound is truncated
/// (a prefix is still a lower bound); a longer upper bound is left out.
pub const MAX_STRING_BOUND_BYTES: usize = 64;

/// Statistics of one column of one data file.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnStats {
    /// Values including nulls (the spec's `value_counts`).
    pub values: u64,
    /// Nulls.
    pub nulls: u64,
    /// NaNs (doubles only).
    pub nans: u64,
    bounds: Bounds,
}

#[derive(Debug, Clone, PartialEq)]
enum Bounds {
    None,
    Bool(bool, bool),
    Long(i64, i64),
    /// Unscaled decimal values.
    Decimal(i128, i128),
    Double(f64, f64),
    Str {
        min: String,
        max: String,
        /// A value held a character at or above U+E000, where UTF-16 order
        /// (Java's) and code point order (Python's, Rust's) can disagree.
        order_unsafe: bool,
    },
}

impl Default for ColumnStats {
    fn default() -> Self {
        Self::new()
    }
}

impl ColumnStats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self {
            values: 0,
            nulls: 0,
            nans: 0,
            bounds: Bounds::None,
        }
    }

    /// Records a null.
    pub fn null(&mut self) {
        self.values += 1;
        self.nulls += 1;
    }

    /// Records a boolean.
    pub fn bool(&mut self, v: bool) {
        self.values += 1;
        self.bounds = match self.bounds {
            Bounds::Bool(lo, hi) => Bounds::Bool(lo & v, hi | v),
            _ => Bounds::Bool(v, v),
        };
    }

    /// Records a long (or a timestamp in microseconds).
    pub fn long(&mut self, v: i64) {
        self.values += 1;
        self.bounds = match self.bounds {
            Bounds::Long(lo, hi) => Bounds::Long(lo.min(v), hi.max(v)),
            _ => Bounds::Long(v, v),
        };
    }

    /// Records a decimal by its unscaled value.
    pub fn decimal(&mut self, v: i128) {
        self.values += 1;
        self.bounds = match self.bounds {
            Bounds::Decimal(lo, hi) => Bounds::Decimal(lo.min(v), hi.max(v)),
            _ => Bounds::Decimal(v, v),
        };
    }

    /// Records a value without bounds (a column whose bounds would be of no
    /// use, such as large JSON documents).
    pub fn unbounded(&mut self) {
        self.values += 1;
    }

    /// Records a double. NaN is counted, never a bound; -0.0 sorts below 0.0.
    pub fn double(&mut self, v: f64) {
        self.values += 1;
        if v.is_nan() {
            self.nans += 1;
            return;
        }
        self.bounds = match self.bounds {
            Bounds::Double(lo, hi) => Bounds::Double(
                if v.total_cmp(&lo) == Ordering::Less {
                    v
                } else {
                    lo
                },
                if v.total_cmp(&hi) == Ordering::Greater {
                    v
                } else {
                    hi
                },
            ),
            _ => Bounds::Double(v, v),
        };
    }

    /// Records a string.
    pub fn string(&mut self, v: &str) {
        self.values += 1;
        let unsafe_chars = v.chars().any(|c| c >= '\u{E000}');
        match &mut self.bounds {
            Bounds::Str {
                min,
                max,
                order_unsafe,
            } => {
                if v < min.as_str() {
                    *min = v.to_string();
                }
                if v > max.as_str() {
                    *max = v.to_string();
                }
                *order_unsafe |= unsafe_chars;
            }
            _ => {
                self.bounds = Bounds::Str {
                    min: v.to_string(),
                    max: v.to_string(),
                    order_unsafe: unsafe_chars,
                }
            }
        }
    }

    /// Adds the statistics of more rows of the same column.
    pub fn merge(&mut self, other: &ColumnStats) {
        self.values += other.values;
        self.nulls += other.nulls;
        self.nans += other.nans;
        let merged = match (&self.bounds, &other.bounds) {
            (_, Bounds::None) => return,
            (Bounds::None, b) => b.clone(),
            (Bounds::Bool(a, b), Bounds::Bool(c, d)) => Bounds::Bool(*a & *c, *b | *d),
            (Bounds::Long(a, b), Bounds::Long(c, d)) => Bounds::Long(*a.min(c), *b.max(d)),
            (Bounds::Decimal(a, b), Bounds::Decimal(c, d)) => Bounds::Decimal(*a.min(c), *b.max(d)),
            (Bounds::Double(a, b), Bounds::Double(c, d)) => Bounds::Double(
                if c.total_cmp(a) == Ordering::Less {
                    *c
                } else {
                    *a
                },
                if d.total_cmp(b) == Ordering::Greater {
                    *d
                } else {
                    *b
                },
            ),
            (
                Bounds::Str {
                    min: a,
                    max: b,
                    order_unsafe: u,
                },
                Bounds::Str {
                    min: c,
                    max: d,
                    order_unsafe: v,
                },
            ) => Bounds::Str {
                min: a.min(c).clone(),
                max: b.max(d).clone(),
                order_unsafe: *u || *v,
            },
            // Different kinds cannot happen for one column; give no bounds
            // rather than wrong ones.
            _ => Bounds::None,
        };
        self.bounds = merged;
    }

    /// The lower bound in the spec's binary encoding, if one can be given.
    pub fn lower_bound(&self) -> Option<Vec<u8>> {
        match &self.bounds {
            Bounds::None => None,
            Bounds::Bool(lo, _) => Some(vec![u8::from(*lo)]),
            Bounds::Long(lo, _) => Some(lo.to_le_bytes().to_vec()),
            Bounds::Decimal(lo, _) => Some(decimal_bytes(*lo)),
            Bounds::Double(lo, _) => Some(lo.to_le_bytes().to_vec()),
            Bounds::Str {
                min, order_unsafe, ..
            } => {
                if *order_unsafe {
                    None
                } else {
                    Some(
                        truncate_utf8(min, MAX_STRING_BOUND_BYTES)
                            .as_bytes()
                            .to_vec(),
                    )
                }
            }
        }
    }

    /// The upper bound in the spec's binary encoding, if one can be given.
    pub fn upper_bound(&self) -> Option<Vec<u8>> {
        match &self.bounds {
            Bounds::None => None,
            Bounds::Bool(_, hi) => Some(vec![u8::from(*hi)]),
            Bounds::Long(_, hi) => Some(hi.to_le_bytes().to_vec()),
            Bounds::Decimal(_, hi) => Some(decimal_bytes(*hi)),
            Bounds::Double(_, hi) => Some(hi.to_le_bytes().to_vec()),
            Bounds::Str {
                max, order_unsafe, ..
            } => {
                if *order_unsafe || max.len() > MAX_STRING_BOUND_BYTES {
                    None
                } else {
                    Some(max.as_bytes().to_vec())
                }
            }
        }
    }
}

/// The spec's encoding of a decimal: the unscaled value as two's-complement
/// big-endian bytes, as few as hold it.
pub fn decimal_bytes(v: i128) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    // Drop a leading byte while the next one carries the same sign.
    while start < bytes.len() - 1 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Microseconds in a day.
const DAY_MICROS: i64 = 86_400_000_000;
/// Microseconds in an hour.
const HOUR_MICROS: i64 = 3_600_000_000;

/// The `day` transform of a timestamp: days since 1970-01-01 (floor).
/// Every `i64` of microseconds has one (±106 million days).
pub fn day_of(micros: i64) -> i32 {
    micros.div_euclid(DAY_MICROS) as i32
}

/// The `hour` transform of a timestamp: hours since 1970-01-01 00:00 (floor).
/// `None` when the hour does not fit an `i32` (beyond about ±245,000 years:
/// see [`MAX_TIMESTAMP_MS`](super::limits::MAX_TIMESTAMP_MS)); a truncated
/// value would put the row in a wrong partition, which readers then skip.
pub fn checked_hour_of(micros: i64) -> Option<i32> {
    i32::try_from(micros.div_euclid(HOUR_MICROS)).ok()
}

/// [`checked_hour_of`] for a timestamp in the writable range (which
/// [`ChangeEvent::timestamp_micros`](super::ChangeEvent::timestamp_micros)
/// ensures); saturates outside it.
pub fn hour_of(micros: i64) -> i32 {
    checked_hour_of(micros).unwrap_or(if micros < 0 { i32::MIN } else { i32::MAX })
}

/// The civil date (year, month, day) of a day number (proleptic Gregorian).
pub fn civil_date(days: i64) -> (i64, u32, u32) {
    // Days from 0000-03-01, in 400-year eras of 146,097 days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The human form of a `day` partition value, as Java writes it in paths
/// (`2026-11-26`).
pub fn day_string(day: i32) -> String {
    let (y, m, d) = civil_date(i64::from(day));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The human form of an `hour` partition value (`2026-11-26-13`).
pub fn hour_string(hour: i32) -> String {
    let h = i64::from(hour);
    let (y, m, d) = civil_date(h.div_euclid(24));
    format!("{y:04}-{m:02}-{d:02}-{:02}", h.rem_euclid(24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_little_endian() {
        let mut s = ColumnStats::new();
        for v in [5_i64, -3, 1 << 40] {
            s.long(v);
        }
        s.null();
        assert_eq!(s.lower_bound().unwrap(), (-3_i64).to_le_bytes().to_vec());
        assert_eq!(
            s.upper_bound().unwrap(),
            vec![0, 0, 0, 0, 0, 1, 0, 0],
            "2^40 little-endian"
        );
        assert_eq!((s.values, s.nulls), (4, 1));
    }

    #[test]
    fn doubles_leave_nan_out_and_order_signed_zero() {
        let mut s = ColumnStats::new();
        for v in [0.0, f64::NAN, -0.0, 2.5] {
            s.double(v);
        }
        assert_eq!(s.nans, 1);
        assert_eq!(s.values, 4);
        assert_eq!(s.lower_bound().unwrap(), (-0.0_f64).to_le_bytes().to_vec());
        assert_eq!(s.upper_bound().unwrap(), 2.5_f64.to_le_bytes().to_vec());
        let mut only_nan = ColumnStats::new();
        only_nan.double(f64::NAN);
        assert_eq!(only_nan.lower_bound(), None);
    }

    #[test]
    fn decimals_are_minimal_big_endian_twos_complement() {
        assert_eq!(decimal_bytes(0), vec![0]);
        assert_eq!(decimal_bytes(1), vec![1]);
        assert_eq!(decimal_bytes(127), vec![0x7f]);
        assert_eq!(decimal_bytes(128), vec![0x00, 0x80]);
        assert_eq!(decimal_bytes(256), vec![0x01, 0x00]);
        assert_eq!(decimal_bytes(-1), vec![0xff]);
        assert_eq!(decimal_bytes(-128), vec![0x80]);
        assert_eq!(decimal_bytes(-129), vec![0xff, 0x7f]);
        assert_eq!(
            decimal_bytes(i128::from(u64::MAX)),
            vec![0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        let mut s = ColumnStats::new();
        for v in [5_i128, i128::from(u64::MAX), 3] {
            s.decimal(v);
        }
        assert_eq!(s.lower_bound().unwrap(), vec![3]);
        assert_eq!(
            s.upper_bound().unwrap(),
            decimal_bytes(i128::from(u64::MAX))
        );
        let mut u = ColumnStats::new();
        u.unbounded();
        assert_eq!(
            (u.values, u.lower_bound(), u.upper_bound()),
            (1, None, None)
        );
    }

    #[test]
    fn booleans_are_one_byte() {
        let mut s = ColumnStats::new();
        s.bool(true);
        assert_eq!(
            (s.lower_bound().unwrap(), s.upper_bound().unwrap()),
            (vec![1], vec![1])
        );
        s.bool(false);
        assert_eq!(
            (s.lower_bound().unwrap(), s.upper_bound().unwrap()),
            (vec![0], vec![1])
        );
    }

    #[test]
    fn strings_are_raw_utf8_and_never_wrong() {
        let mut s = ColumnStats::new();
        for v in ["pear", "apple", "zoë"] {
            s.string(v);
        }
        assert_eq!(s.lower_bound().unwrap(), b"apple".to_vec());
        assert_eq!(s.upper_bound().unwrap(), "zoë".as_bytes().to_vec());

        // Long values: the lower bound is a prefix, the upper bound is left out.
        let long = "é".repeat(40); // 80 bytes
        let mut s = ColumnStats::new();
        s.string(&long);
        let lo = s.lower_bound().unwrap();
        assert!(lo.len() <= MAX_STRING_BOUND_BYTES);
        assert!(long.as_bytes().starts_with(&lo));
        assert!(std::str::from_utf8(&lo).is_ok());
        assert_eq!(s.upper_bound(), None);

        // Characters where Java's UTF-16 order differs: no bounds at all.
        let mut s = ColumnStats::new();
        s.string("a");
        s.string("\u{1F600}");
        assert_eq!((s.lower_bound(), s.upper_bound()), (None, None));
    }

    #[test]
    fn merge_equals_recording_everything() {
        let mut a = ColumnStats::new();
        a.string("m");
        a.null();
        let mut b = ColumnStats::new();
        b.string("b");
        b.string("x");
        let mut all = ColumnStats::new();
        for v in ["m", "b", "x"] {
            all.string(v);
        }
        all.null();
        a.merge(&b);
        assert_eq!(a.lower_bound(), all.lower_bound());
        assert_eq!(a.upper_bound(), all.upper_bound());
        assert_eq!((a.values, a.nulls), (4, 1));
    }

    #[test]
    fn transforms_floor_and_format() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(-1), -1);
        assert_eq!(hour_of(-1), -1);
        assert_eq!(day_of(i64::MAX), 106_751_991);
        assert_eq!(day_of(i64::MIN), -106_751_992);
        assert_eq!(checked_hour_of(i64::MAX), None);
        assert_eq!(checked_hour_of(i64::MIN), None);
        assert_eq!(
            checked_hour_of(i64::from(i32::MAX) * HOUR_MICROS),
            Some(i32::MAX)
        );
        assert_eq!(
            checked_hour_of(i64::from(i32::MAX) * HOUR_MICROS + HOUR_MICROS),
            None
        );
        assert_eq!(
            checked_hour_of(i64::from(i32::MIN) * HOUR_MICROS),
            Some(i32::MIN)
        );
        assert_eq!(checked_hour_of(i64::from(i32::MIN) * HOUR_MICROS - 1), None);
        // 2026-11-26T13:45:00Z
        let micros = 1_795_700_700_000_000_i64;
        assert_eq!(day_string(day_of(micros)), "2026-11-26");
        assert_eq!(hour_string(hour_of(micros)), "2026-11-26-13");
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(-1), "1969-12-31");
        assert_eq!(day_string(11_016), "2000-02-29");
    }
}
