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
    assert_eq!(refusal.reason.as_str(), "ip_limit");
    assert!(refusal.message.contains("maxConnectionsPerIp"));
    for _ in 0..3 {
        gate.admit(&mut bucket, 0, 0).unwrap();
    }
    let refusal = gate.admit(&mut bucket, 0, 0).unwrap_err();
    assert_eq!(refusal.reason.as_str(), "rate_limited");
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

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    for header in [
        "Bearer s3cret",
        "bearer s3cret",
        "BEARER s3cret",
        "bEaReR s3cret",
    ] {
        assert!(check_token(Some(header), "s3cret"), "{header:?}");
    }
    for header in ["Bearers s3cret", "Beare s3cret", "Bearer-s3cret", "Bearer"] {
        assert!(!check_token(Some(header), "s3cret"), "{header:?}");
    }
}

#[test]
fn spaces_before_the_token_are_tolerated_but_not_inside_or_after_it() {
    // RFC 7235: `credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`.
    assert!(check_token(Some("Bearer  s3cret"), "s3cret"));
    assert!(check_token(Some("bearer    s3cret"), "s3cret"));
    assert!(!check_token(Some("Bearer s3cret  "), "s3cret"));
    assert!(!check_token(Some("Bearer s3 cret"), "s3cret"));
    assert!(!check_token(Some(" Bearer s3cret"), "s3cret"));
    assert!(
        !check_token(Some("Bearer\ts3cret"), "s3cret"),
        "a tab is not SP"
    );
    assert!(!check_token(Some("Bearer "), "s3cret"));
    assert!(!check_token(Some("Bearer   "), "s3cret"));
}

#[test]
fn the_token_itself_is_case_sensitive_and_an_empty_secret_matches_nothing() {
    assert!(!check_token(Some("Bearer S3CRET"), "s3cret"));
    assert!(!check_token(Some("bearer S3cret"), "s3cret"));
    assert!(!check_token(Some("Bearer "), ""));
    assert!(!check_token(Some("Bearer x"), ""));
    assert!(!check_token(None, ""));
}

#[test]
fn the_front_door_routes_by_table_and_needs_no_object_to_refuse() {
    let open = |path: &str, table: Option<&str>| front_door(path, true, table, None, None);
    assert_eq!(open("/ws", None), FrontDoor::Instance("default".into()));
    assert_eq!(
        open("/ws/x", Some("")),
        FrontDoor::Instance("default".into())
    );
    assert_eq!(
        open("/lakehouse/status", Some("users")),
        FrontDoor::Instance("lakehouse-users".into())
    );
    assert_eq!(
        open("/lakehouse/health", Some("a_b-9")),
        FrontDoor::Instance("lakehouse-a_b-9".into()),
        "without a token even health goes to the instance"
    );
    assert_eq!(open("/", None), FrontDoor::NotFound);
    assert_eq!(open("/wsx", None), FrontDoor::NotFound);
    for bad in ["a/b", "..", "a\u{0}b"] {
        match open("/lakehouse/status", Some(bad)) {
            FrontDoor::BadTable(e) => {
                assert_eq!(e.kind(), crate::ErrorKind::InvalidFormat);
                assert!(e.message().contains("table name"), "{e}");
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

#[test]
fn with_a_token_only_health_passes_without_it_and_the_worker_answers_it() {
    let secret = Some("s3cret");
    let door =
        |path: &str, get: bool, auth: Option<&str>| front_door(path, get, Some("x1"), auth, secret);
    assert_eq!(
        door("/lakehouse/health", true, None),
        FrontDoor::WorkerHealth
    );
    assert_eq!(
        door("/lakehouse/health", true, Some("Bearer wrong")),
        FrontDoor::WorkerHealth
    );
    assert_eq!(
        door("/lakehouse/health", false, None),
        FrontDoor::Unauthorized
    );
    assert_eq!(
        door("/lakehouse/status", true, None),
        FrontDoor::Unauthorized
    );
    assert_eq!(
        door("/lakehouse/flush", false, None),
        FrontDoor::Unauthorized
    );
    assert_eq!(
        door("/ws", true, Some("Basic s3cret")),
        FrontDoor::Unauthorized
    );
    assert_eq!(door("/lakehouse", true, None), FrontDoor::Unauthorized);
    for auth in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret"] {
        assert_eq!(
            door("/lakehouse/health", true, Some(auth)),
            FrontDoor::Instance("lakehouse-x1".into()),
            "{auth}"
        );
        assert_eq!(
            door("/ws", true, Some(auth)),
            FrontDoor::Instance("lakehouse-x1".into())
        );
    }
    // A bad name is 400 whoever asks; 404 needs no token either.
    assert!(matches!(
        front_door("/lakehouse/status", true, Some("a/b"), None, secret),
        FrontDoor::BadTable(_)
    ));
    assert_eq!(
        front_door("/nope", true, None, None, secret),
        FrontDoor::NotFound
    );
    // An empty secret means authentication is off.
    assert_eq!(
        front_door("/lakehouse/status", true, None, None, Some("")),
        FrontDoor::Instance("default".into())
    );
    // The REST catalog: one instance, whatever `table` says, same token.
    assert_eq!(
        front_door(
            "/v1/config",
            true,
            Some("a/b"),
            Some("Bearer s3cret"),
            secret
        ),
        FrontDoor::Instance(CATALOG_INSTANCE.into())
    );
    assert_eq!(
        front_door("/v1/namespaces", true, None, None, secret),
        FrontDoor::Unauthorized
    );
    assert_eq!(
        front_door("/v10", true, None, None, None),
        FrontDoor::NotFound
    );
    assert_ne!(
        front_door("/ws", true, Some(CATALOG_INSTANCE), None, None),
        FrontDoor::Instance(CATALOG_INSTANCE.into()),
        "no table routes to the catalog instance"
    );
}
