//! Deterministic change events: a splitmix64 stream per shard, rows that are
//! inserted, updated and deleted in the `--mix` proportions.

use dolake::protocol::{CdcEvent, Operation};
use serde_json::{json, Map, Value};

/// splitmix64: tiny, fast, good enough for load shapes.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

struct LiveRow {
    number: u64,
    table: usize,
    version: u64,
}

/// One shard's change stream.
pub struct Generator {
    rng: Rng,
    source: String,
    tables: Vec<String>,
    mix: [u32; 3],
    payload_len: usize,
    next_sequence: u64,
    next_row: u64,
    live: Vec<LiveRow>,
}

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// JSON size of a row image without its payload, roughly.
const ROW_OVERHEAD: usize = 120;

impl Generator {
    pub fn new(
        seed: u64,
        shard: usize,
        source: String,
        tables: Vec<String>,
        mix: [u32; 3],
        row_bytes: usize,
    ) -> Self {
        let mut mixer = Rng::new(seed ^ 0x5EED_0000_0000_0000);
        for _ in 0..=shard {
            mixer.next_u64();
        }
        Generator {
            rng: Rng::new(mixer.next_u64()),
            source,
            tables,
            mix,
            payload_len: row_bytes.saturating_sub(ROW_OVERHEAD),
            next_sequence: 0,
            next_row: 0,
            live: Vec::new(),
        }
    }

    fn image(&mut self, number: u64, version: u64) -> Map<String, Value> {
        let payload: String = (0..self.payload_len)
            .map(|_| ALPHABET[self.rng.below(ALPHABET.len() as u64) as usize] as char)
            .collect();
        let Value::Object(row) = json!({
            "id": format!("{}-r{number}", self.source),
            "n": number,
            "version": version,
            "name": format!("name-{number}-{version}"),
            "score": (self.rng.below(1_000_000) as f64) / 4.0,
            "active": self.rng.below(2) == 0,
            "payload": payload,
        }) else {
            unreachable!("json! object")
        };
        row
    }

    fn pick_operation(&mut self) -> Operation {
        let total: u64 = self.mix.iter().map(|&w| w as u64).sum();
        let roll = self.rng.below(total.max(1));
        let op = if roll < self.mix[0] as u64 {
            Operation::Insert
        } else if roll < (self.mix[0] + self.mix[1]) as u64 {
            Operation::Update
        } else {
            Operation::Delete
        };
        if op != Operation::Insert && self.live.is_empty() {
            Operation::Insert
        } else {
            op
        }
    }

    /// The next event of the stream; `timestamp` is the caller's clock.
    pub fn next_event(&mut self, timestamp: i64) -> CdcEvent {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let operation = self.pick_operation();
        let (number, table, before, after) = match operation {
            Operation::Insert => {
                let number = self.next_row;
                self.next_row += 1;
                let table = self.rng.below(self.tables.len() as u64) as usize;
                self.live.push(LiveRow {
                    number,
                    table,
                    version: 0,
                });
                (number, table, None, Some(self.image(number, 0)))
            }
            Operation::Update => {
                let i = self.rng.below(self.live.len() as u64) as usize;
                let (number, table, version) = {
                    let r = &mut self.live[i];
                    r.version += 1;
                    (r.number, r.table, r.version)
                };
                let before = self.image(number, version - 1);
                (
                    number,
                    table,
                    Some(before),
                    Some(self.image(number, version)),
                )
            }
            Operation::Delete => {
                let i = self.rng.below(self.live.len() as u64) as usize;
                let r = self.live.swap_remove(i);
                (
                    r.number,
                    r.table,
                    Some(self.image(r.number, r.version)),
                    None,
                )
            }
        };
        CdcEvent {
            sequence,
            timestamp,
            operation,
            table: self.tables[table].clone(),
            row_id: format!("{}-r{number}", self.source),
            before,
            after,
            metadata: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(seed: u64, shard: usize) -> Vec<String> {
        let mut g = Generator::new(
            seed,
            shard,
            "s".into(),
            vec!["a".into(), "b".into()],
            [70, 20, 10],
            200,
        );
        (0..200)
            .map(|_| serde_json::to_string(&g.next_event(1)).unwrap())
            .collect()
    }

    #[test]
    fn same_seed_same_events_other_shard_other_events() {
        assert_eq!(stream(7, 0), stream(7, 0));
        assert_ne!(stream(7, 0), stream(7, 1));
        assert_ne!(stream(7, 0), stream(8, 0));
    }

    #[test]
    fn mix_and_row_size_are_roughly_honoured() {
        let mut g = Generator::new(1, 0, "src-0".into(), vec!["t".into()], [70, 20, 10], 300);
        let events: Vec<CdcEvent> = (0..5000).map(|_| g.next_event(1)).collect();
        let inserts = events
            .iter()
            .filter(|e| e.operation == Operation::Insert)
            .count();
        assert!((3300..3700).contains(&inserts), "{inserts}");
        let row = serde_json::to_string(events[0].after.as_ref().unwrap()).unwrap();
        assert!((250..350).contains(&row.len()), "{}", row.len());
        for e in &events {
            assert_eq!(e.after.is_some(), e.operation != Operation::Delete);
            assert_eq!(e.before.is_some(), e.operation != Operation::Insert);
        }
    }
}
