use super::*;

fn limits(text: &str) -> RateLimitConfig {
    crate::config::DoLakeConfig::parse(Some(text))
        .unwrap()
        .rate_limit
}

#[test]
fn a_bucket_bursts_then_refills_at_its_rate() {
    let mut b = TokenBucket::full(5, 0);
    for left in (0..5).rev() {
        assert_eq!(b.take(5, 10, 0), Ok(left));
    }
    assert_eq!(
        b.take(5, 10, 0),
        Err(Throttled {
            retry_after_ms: 100
        })
    );
    assert_eq!(b.take(5, 10, 50), Err(Throttled { retry_after_ms: 50 }));
    assert_eq!(b.take(5, 10, 100), Ok(0));
    assert_eq!(b.remaining(5, 10, 10_000), 5, "never above capacity");
    assert_eq!(b.full_at(5, 10, 100), 600);
    // A clock going backwards does not mint tokens.
    let mut c = TokenBucket::full(1, 1000);
    assert!(c.take(1, 1, 1000).is_ok());
    assert!(c.take(1, 1, 0).is_err());
}

#[test]
fn upgrades_are_limited_by_rate_burst_and_ip() {
    let l = limits(
        r#"{"rateLimit":{"connectionsPerSecond":2,"burstCapacity":3,"maxConnectionsPerIp":2}}"#,
    );
    let gate = ConnectionGate::new(&l);
    let mut bucket = TokenBucket::full(l.burst_capacity, 0);
    let refusal = gate.admit(&mut bucket, 2, 0).unwrap_err();
    assert_eq!(refusal.reason, "ip_limit");
    assert!(refusal.message.contains("maxConnectionsPerIp"));
    for _ in 0..3 {
        gate.admit(&mut bucket, 0, 0).unwrap();
    }
    let refusal = gate.admit(&mut bucket, 0, 0).unwrap_err();
    assert_eq!(refusal.reason, "rate_limited");
    assert_eq!(refusal.retry_after_s, 1);
    assert_eq!(refusal.limit, 3);
    assert_eq!(refusal.remaining, 0);
    assert_eq!(refusal.reset_s, 2, "full again after 1.5 s, rounded up");
    gate.admit(&mut bucket, 0, 500).unwrap();
}

#[test]
fn messages_are_limited_per_connection_and_strikes_close() {
    let l = limits(r#"{"rateLimit":{"messagesPerSecond":4}}"#);
    let mut gate = MessageGate::new(&l, 0);
    for left in (0..4).rev() {
        assert_eq!(
            gate.on_message(&l, 0),
            MessageVerdict::Allowed {
                remaining: left,
                reset_at: (4 - left as i64) * 250
            }
        );
    }
    assert_eq!(gate.on_message(&l, 0), MessageVerdict::Throttled(250));
    assert!(matches!(
        gate.on_message(&l, 250),
        MessageVerdict::Allowed { .. }
    ));
    // The state survives a round trip through the attachment.
    let restored: MessageGate =
        serde_json::from_str(&serde_json::to_string(&gate).unwrap()).unwrap();
    assert_eq!(restored, gate);
    assert!(!gate.strike());
    assert!(!gate.strike());
    assert!(gate.strike());
}

#[test]
fn tokens_must_match_exactly() {
    assert!(check_token(Some("Bearer s3cret"), "s3cret"));
    assert!(!check_token(Some("Bearer s3cret "), "s3cret"));
    assert!(!check_token(Some("Bearer s3cre"), "s3cret"));
    assert!(!check_token(Some("s3cret"), "s3cret"));
    assert!(!check_token(Some("Basic s3cret"), "s3cret"));
    assert!(!check_token(None, "s3cret"));
}
