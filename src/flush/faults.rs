//! Failure injection for tests: which R2 puts fail and where a flush pauses
//! (so that a test can kill the runtime at that exact step).
//!
//! Only reachable when the worker runs with `DOLAKE_TEST_HOOKS=1`.

use serde::Deserialize;

use crate::lake::ObjectKind;

/// A step of the commit protocol, named after the object just put.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommitStep {
    /// All data files of a table are put.
    Data,
    /// The manifest and manifest list are put.
    Manifests,
    /// `v{N}.metadata.json` is put (the commit point).
    Metadata,
    /// `version-hint.text` is put; the buffer is not yet trimmed.
    VersionHint,
}

impl CommitStep {
    /// The step that ends with an object of `kind`.
    pub fn after(kind: ObjectKind) -> Self {
        match kind {
            ObjectKind::Data => CommitStep::Data,
            ObjectKind::Manifest | ObjectKind::ManifestList => CommitStep::Manifests,
            ObjectKind::Metadata => CommitStep::Metadata,
            ObjectKind::VersionHint => CommitStep::VersionHint,
        }
    }
}

/// What to break.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FaultPlan {
    /// Fail these puts (1-based, counted from when the plan was set).
    pub fail_nth_puts: Vec<u64>,
    /// Fail every put whose key contains this text.
    pub fail_keys_containing: Option<String>,
    /// Fail every put until this time, Unix ms.
    pub fail_until_ms: Option<i64>,
    /// Pause the flush (for a long time) once this step is done.
    pub pause_after: Option<CommitStep>,
    /// Pause only when the step's last put had a key containing this text
    /// (a step of one table's commit).
    pub pause_when_key_contains: Option<String>,
    /// Replaces the flush's time budget (ms), to make flushes continue
    /// across alarms with little data.
    pub time_budget_ms: Option<i64>,
    #[serde(skip)]
    puts_seen: u64,
    #[serde(skip)]
    last_key: String,
}

impl FaultPlan {
    /// Called before each put; returns why it must fail, if it must.
    pub fn before_put(&mut self, key: &str, now: i64) -> Option<String> {
        self.puts_seen += 1;
        self.last_key = key.to_string();
        if self.fail_nth_puts.contains(&self.puts_seen) {
            return Some(format!("injected failure of put #{}", self.puts_seen));
        }
        if let Some(text) = &self.fail_keys_containing {
            if key.contains(text.as_str()) {
                return Some(format!("injected failure of puts matching {text:?}"));
            }
        }
        if self.fail_until_ms.is_some_and(|until| now < until) {
            return Some("injected R2 outage".to_string());
        }
        None
    }

    /// Whether to pause once `step` is done.
    pub fn pauses_after(&self, step: CommitStep) -> bool {
        self.pause_after == Some(step)
            && self
                .pause_when_key_contains
                .as_ref()
                .is_none_or(|text| self.last_key.contains(text.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_matches_and_periods() {
        let mut plan: FaultPlan = serde_json::from_str(
            r#"{"failNthPuts":[2],"failKeysContaining":"metadata.json","failUntilMs":100}"#,
        )
        .unwrap();
        assert!(plan.before_put("a", 50).is_some(), "outage");
        assert!(plan.before_put("a", 150).unwrap().contains("#2"));
        assert!(plan
            .before_put("t/metadata/v1.metadata.json", 150)
            .is_some());
        assert!(plan.before_put("t/data/x.parquet", 150).is_none());
        assert!(serde_json::from_str::<FaultPlan>(r#"{"bogus":1}"#).is_err());
        let plan: FaultPlan = serde_json::from_str(r#"{"pauseAfter":"version-hint"}"#).unwrap();
        assert!(plan.pauses_after(CommitStep::after(ObjectKind::VersionHint)));
        assert!(!plan.pauses_after(CommitStep::Data));
        let mut plan: FaultPlan =
            serde_json::from_str(r#"{"pauseAfter":"metadata","pauseWhenKeyContains":"_current/"}"#)
                .unwrap();
        plan.before_put("default/users/metadata/v2.metadata.json", 0);
        assert!(!plan.pauses_after(CommitStep::Metadata));
        plan.before_put("default_current/users/metadata/v2.metadata.json", 0);
        assert!(plan.pauses_after(CommitStep::Metadata));
    }
}
