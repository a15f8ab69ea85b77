//! Prometheus text exposition of DoLake's counters and gauges.
//!
//! The adapter gathers the numbers (from the intake, the flush history and
//! the refusal counters, all persisted, so counters never go backwards across
//! restarts); this module only renders them, with `HELP` and `TYPE` lines and
//! the `dolake_` prefix.

use std::fmt::Write;

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// A Prometheus text document under construction.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else if value.is_nan() {
        "NaN".to_string()
    } else if value > 0.0 {
        "+Inf".to_string()
    } else {
        "-Inf".to_string()
    }
}

impl Exposition {
    /// An empty document.
    pub fn new() -> Self {
        Self::default()
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help, &[(vec![], value)])
    }

    /// A family with labelled samples.
    pub fn family(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: &[(Vec<(&str, String)>, f64)],
    ) -> &mut Self {
        let name = format!("dolake_{name}");
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(self.text, "{name} {}", number(*value));
            } else {
                let labels: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = writeln!(
                    self.text,
                    "{name}{{{}}} {}",
                    labels.join(","),
                    number(*value)
                );
            }
        }
        self
    }

    /// The document.
    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_parseable_text() {
        let mut e = Exposition::new();
        e.single("buffer_events", Kind::Gauge, "Events buffered.", 12.0)
            .family(
                "refusals_total",
                Kind::Counter,
                "Refusals by reason.",
                &[
                    (vec![("reason", "rate_limited".to_string())], 3.0),
                    (vec![("reason", "we\"ird\\".to_string())], 1.0),
                ],
            )
            .single("buffer_utilization", Kind::Gauge, "Fill.", 0.25);
        let text = e.finish();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        assert_eq!(scrape.samples.len(), 4);
        let get = |name: &str| scrape.samples.iter().find(|s| s.metric == name).unwrap();
        assert!(
            matches!(get("dolake_buffer_events").value, prometheus_parse::Value::Gauge(v) if v == 12.0)
        );
        let refusal = scrape
            .samples
            .iter()
            .find(|s| s.labels.get("reason") == Some("rate_limited"))
            .unwrap();
        assert!(matches!(refusal.value, prometheus_parse::Value::Counter(v) if v == 3.0));
        assert_eq!(
            scrape.docs.get("dolake_refusals_total").map(String::as_str),
            Some("Refusals by reason.")
        );
    }
}
