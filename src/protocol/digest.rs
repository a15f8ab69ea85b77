//! The content digest of change events: XXH3 (64 bits) over a canonical byte
//! form of their decoded content (numbers by value, objects by sorted key,
//! the last of duplicate keys), so the same events sent as other text (key
//! order, spacing, escapes) have the same digest. Deduplication keeps it to
//! tell a resend from a reused sequence number, so it is stored: stable
//! across builds and targets.
//!
//! It is computed two ways that give the same bytes (tested): from decoded
//! events ([`events_digest`]), and from an event's text in the one pass that
//! checks it ([`Image`], [`Canonical`]), without building maps.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use xxhash_rust::xxh3::Xxh3;

use super::client::{CdcEvent, Operation};

/// The digest of `events`, in order.
pub(crate) fn events_digest(events: &[CdcEvent]) -> u64 {
    let mut digest = Digest::default();
    let (mut before, mut after, mut metadata) = (Vec::new(), Vec::new(), Vec::new());
    for e in events {
        for (out, image) in [(&mut before, &e.before), (&mut after, &e.after)] {
            out.clear();
            if let Some(map) = image {
                put_object(out, map);
            }
        }
        metadata.clear();
        if let Some(v) = &e.metadata {
            put_value(&mut metadata, v);
        }
        // A value's canonical bytes are never empty: empty is absent.
        fn part(bytes: &[u8]) -> Option<&[u8]> {
            (!bytes.is_empty()).then_some(bytes)
        }
        digest.event(
            EventHead {
                sequence: e.sequence,
                timestamp: e.timestamp,
                operation: e.operation,
                table: &e.table,
                row_id: &e.row_id,
            },
            [part(&before), part(&after), part(&metadata)],
        );
    }
    digest.finish()
}

/// The scalar fields of an event, in the digest's order.
pub(crate) struct EventHead<'a> {
    pub sequence: u64,
    pub timestamp: i64,
    pub operation: Operation,
    pub table: &'a str,
    pub row_id: &'a str,
}

/// A digest fed event by event.
#[derive(Default)]
pub(crate) struct Digest {
    hasher: Xxh3,
    scratch: Vec<u8>,
}

impl Digest {
    /// Adds one event: its head, then the canonical bytes of `before`,
    /// `after` and `metadata` (`-` for one that is absent).
    pub fn event(&mut self, head: EventHead<'_>, parts: [Option<&[u8]>; 3]) {
        let out = &mut self.scratch;
        out.clear();
        put8(out, head.sequence.to_le_bytes());
        put8(out, head.timestamp.to_le_bytes());
        put_str(out, head.operation.as_str());
        put_str(out, head.table);
        put_str(out, head.row_id);
        self.hasher.update(out);
        // A streaming hash: the same digest as of the bytes joined.
        for part in parts {
            self.hasher.update(part.unwrap_or(b"-"));
        }
    }

    /// The digest of the events added.
    pub fn finish(&self) -> u64 {
        self.hasher.digest()
    }
}

/// Appends 8 bytes. Inlined to one store: in WASM a generic extend costs a
/// call and a `memory.copy`, more than the copy itself, and the digest makes
/// several per value.
#[inline(always)]
fn put8(out: &mut Vec<u8>, bytes: [u8; 8]) {
    out.reserve(8);
    let len = out.len();
    // SAFETY: `reserve` made room for 8 bytes past `len`; they are written
    // before the length covers them.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().add(len), 8);
        out.set_len(len + 8);
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put8(out, (s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    out.push(b'o');
    put8(out, (map.len() as u64).to_le_bytes());
    // serde_json's map is ordered by key: the order of the text plays no part.
    for (k, v) in map {
        put_str(out, k);
        put_value(out, v);
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(b'n'),
        Value::Bool(b) => out.push(if *b { b't' } else { b'f' }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                put_u64(out, u);
            } else if let Some(i) = n.as_i64() {
                put_i64(out, i);
            } else {
                put_f64(out, n.as_f64().unwrap_or(f64::NAN));
            }
        }
        Value::String(s) => {
            out.push(b's');
            put_str(out, s);
        }
        Value::Array(items) => {
            out.push(b'a');
            put8(out, (items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| put_value(out, item));
        }
        Value::Object(map) => put_object(out, map),
    }
}

fn put_u64(out: &mut Vec<u8>, u: u64) {
    out.push(b'u');
    put8(out, u.to_le_bytes());
}

fn put_i64(out: &mut Vec<u8>, i: i64) {
    out.push(b'i');
    put8(out, i.to_le_bytes());
}

fn put_f64(out: &mut Vec<u8>, f: f64) {
    out.push(b'd');
    put8(out, f.to_bits().to_le_bytes());
}

/// An event's `before` or `after` read from its text: a JSON object (any
/// other value is refused, as decoding it into a map would), in canonical
/// form, with its count of distinct keys and its nesting.
#[derive(Debug, Default)]
pub(crate) struct Image {
    /// The canonical bytes.
    pub bytes: Vec<u8>,
    /// Distinct keys.
    pub keys: usize,
    /// Levels of arrays and objects, the image itself counting as one.
    pub depth: usize,
}

impl<'de> Deserialize<'de> for Image {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly;
        impl<'de> Visitor<'de> for ObjectOnly {
            type Value = Image;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Image, A::Error> {
                forget_entries();
                let mut bytes = Vec::with_capacity(512);
                let shape = CanonicalSeed { out: &mut bytes }.visit_map(map)?;
                Ok(Image {
                    bytes,
                    keys: shape.keys,
                    depth: shape.depth,
                })
            }
        }
        deserializer.deserialize_map(ObjectOnly)
    }
}

/// Any JSON value read from its text (an event's `metadata`), in canonical
/// form, with its nesting.
#[derive(Debug, Default)]
pub(crate) struct Canonical {
    /// The canonical bytes.
    pub bytes: Vec<u8>,
    /// Levels of arrays and objects (0 for a scalar).
    pub depth: usize,
}

impl<'de> Deserialize<'de> for Canonical {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        forget_entries();
        let mut bytes = Vec::new();
        let shape = CanonicalSeed { out: &mut bytes }.deserialize(deserializer)?;
        Ok(Canonical {
            bytes,
            depth: shape.depth,
        })
    }
}

/// What writing a value canonically learned of it.
#[derive(Clone, Copy)]
struct Shape {
    depth: usize,
    /// Distinct keys, for an object.
    keys: usize,
}

impl Shape {
    const SCALAR: Shape = Shape { depth: 0, keys: 0 };
}

thread_local! {
    /// Entries of the objects being written, innermost last: (start, end of
    /// key, end of value) in the output.
    static ENTRIES: std::cell::RefCell<Vec<(usize, usize, usize)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Empties the stack of entries before a value is read from the top: a
/// value whose reading failed leaves its entries behind.
fn forget_entries() {
    ENTRIES.with(|e| e.borrow_mut().clear());
}

/// Writes one value, as [`put_value`] writes its decoded form.
struct CanonicalSeed<'o> {
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for CanonicalSeed<'_> {
    type Value = Shape;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Shape, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// A string, borrowed from the text when it has no escapes.
pub(crate) struct Text<'de>(pub Cow<'de, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

// Each `visit_*` mirrors serde_json's own `Value` visitor, so a value reads
// the same here as decoded into a `Value`.
impl<'de> Visitor<'de> for CanonicalSeed<'_> {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Shape, E> {
        self.out.push(b'n');
        Ok(Shape::SCALAR)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Shape, E> {
        self.out.push(if v { b't' } else { b'f' });
        Ok(Shape::SCALAR)
    }

    fn visit_u64<E>(self, v: u64) -> Result<Shape, E> {
        put_u64(self.out, v);
        Ok(Shape::SCALAR)
    }

    fn visit_i64<E>(self, v: i64) -> Result<Shape, E> {
        // A `Number` made from an i64 holds a non-negative one as unsigned.
        match u64::try_from(v) {
            Ok(u) => put_u64(self.out, u),
            Err(_) => put_i64(self.out, v),
        }
        Ok(Shape::SCALAR)
    }

    fn visit_f64<E>(self, v: f64) -> Result<Shape, E> {
        // What is not a finite number decodes to `null`.
        if v.is_finite() {
            put_f64(self.out, v);
        } else {
            self.out.push(b'n');
        }
        Ok(Shape::SCALAR)
    }

    fn visit_str<E>(self, v: &str) -> Result<Shape, E> {
        self.out.push(b's');
        put_str(self.out, v);
        Ok(Shape::SCALAR)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let out = self.out;
        out.push(b'a');
        let len_at = out.len();
        put8(out, [0; 8]);
        let (mut len, mut depth) = (0u64, 0);
        while let Some(shape) = seq.next_element_seed(CanonicalSeed { out: &mut *out })? {
            len += 1;
            depth = depth.max(shape.depth);
        }
        out[len_at..len_at + 8].copy_from_slice(&len.to_le_bytes());
        Ok(Shape {
            depth: depth + 1,
            keys: 0,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let out = self.out;
        out.push(b'o');
        let len_at = out.len();
        put8(out, [0; 8]);
        let body = out.len();
        // Where each entry's bytes (key, then value) lie, on a stack shared
        // with the objects inside (no allocation per object); and whether
        // the keys came strictly sorted, as they usually do.
        let base = ENTRIES.with(|e| e.borrow().len());
        let (mut depth, mut sorted, mut previous) = (0, true, None::<(usize, usize)>);
        while let Some(Text(key)) = map.next_key()? {
            let start = out.len();
            put_str(out, &key);
            let this = (start + 8, out.len());
            if let Some((from, to)) = previous {
                sorted &= out[from..to] < out[this.0..this.1];
            }
            previous = Some(this);
            let shape = map.next_value_seed(CanonicalSeed { out: &mut *out })?;
            depth = depth.max(shape.depth);
            ENTRIES.with(|e| e.borrow_mut().push((start, this.1, out.len())));
        }
        let keys = ENTRIES.with(|e| {
            let mut stack = e.borrow_mut();
            let entries = &mut stack[base..];
            let mut keys = entries.len();
            if !sorted {
                // Sorted by key (a stable sort: equal keys stay in text
                // order), keeping the last of equal keys, as a map decoded
                // from the text; written after the entries, then moved into
                // their place.
                let key = |&(start, key_end, _): &(usize, usize, usize)| start + 8..key_end;
                entries.sort_by(|a, b| out[key(a)].cmp(&out[key(b)]));
                let end = out.len();
                keys = 0;
                for (i, entry) in entries.iter().enumerate() {
                    let superseded = entries
                        .get(i + 1)
                        .is_some_and(|next| out[key(next)] == out[key(entry)]);
                    if !superseded {
                        out.extend_from_within(entry.0..entry.2);
                        keys += 1;
                    }
                }
                out.copy_within(end.., body);
                out.truncate(body + (out.len() - end));
            }
            stack.truncate(base);
            keys
        });
        out[len_at..len_at + 8].copy_from_slice(&(keys as u64).to_le_bytes());
        Ok(Shape {
            depth: depth + 1,
            keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canonical_of_text(text: &str) -> Vec<u8> {
        serde_json::from_str::<Canonical>(text).unwrap().bytes
    }

    fn canonical_of_value(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        put_value(&mut out, &serde_json::from_str(text).unwrap());
        out
    }

    #[test]
    fn text_and_decoded_value_give_the_same_bytes() {
        for text in [
            r#"{"b":1,"a":[1,-2,3.5,"x\u00e9",null,true,{"z":{},"y":[]}],"c":-0}"#,
            r#"{"k":1,"k":2,"a":0}"#,
            r#"[18446744073709551615,-9223372036854775808,1e300,0.1]"#,
            r#""\ud83d\ude00 \" \\""#,
            r#"{}"#,
        ] {
            assert_eq!(canonical_of_text(text), canonical_of_value(text), "{text}");
        }
    }

    #[test]
    fn an_image_must_be_an_object_and_counts_distinct_keys_and_levels() {
        assert!(serde_json::from_str::<Image>("[1]").is_err());
        assert!(serde_json::from_str::<Image>("5").is_err());
        let image: Image = serde_json::from_str(r#"{"a":1,"b":{"c":[1]},"a":3}"#).unwrap();
        assert_eq!((image.keys, image.depth), (2, 3));
        let flat: Image = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!((flat.keys, flat.depth), (0, 1));
    }

    /// A JSON value as text, whose objects may repeat keys and list them in
    /// any order.
    #[derive(Debug, Clone)]
    enum Tree {
        Leaf(Value),
        Array(Vec<Tree>),
        Object(Vec<(String, Tree)>),
    }

    impl Tree {
        fn text(&self) -> String {
            match self {
                Tree::Leaf(v) => v.to_string(),
                Tree::Array(items) => {
                    let items: Vec<String> = items.iter().map(Tree::text).collect();
                    format!("[{}]", items.join(","))
                }
                Tree::Object(pairs) => {
                    let pairs: Vec<String> = pairs
                        .iter()
                        .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v.text()))
                        .collect();
                    format!("{{{}}}", pairs.join(","))
                }
            }
        }
    }

    fn arb_tree() -> impl Strategy<Value = Tree> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-c\\\\\"\u{e9}\u{1F600}]{0,4}".prop_map(Value::from),
        ]
        .prop_map(Tree::Leaf);
        leaf.prop_recursive(4, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Tree::Array),
                prop::collection::vec(("[a-d]{0,2}", inner), 0..5).prop_map(Tree::Object),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_text_gives_the_bytes_of_its_decoded_value(tree in arb_tree()) {
            let text = tree.text();
            prop_assert_eq!(canonical_of_text(&text), canonical_of_value(&text), "{}", text);
        }
    }
}
