//! The coordinator's settings from file and flags: defaults, precedence,
//! bounds, and errors that name the key.

use super::*;

fn args() -> Args {
    Args {
        data_dir: Some("/tmp/x".into()),
        operator_token: Some("0123456789abcdef".into()),
        insecure_plaintext: true,
        ..Args::default()
    }
}

#[test]
fn defaults_apply_and_flags_beat_the_file() {
    let file: FileConfig =
        toml::from_str("retention = \"7d\"\nheartbeat_interval = \"2s\"\n").unwrap();
    let c = Config::merge(
        Args {
            heartbeat_interval: Some("1s".into()),
            ..args()
        },
        file,
    )
    .unwrap();
    assert_eq!(c.retention, Duration::from_secs(7 * 86_400));
    assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
    assert_eq!(c.offline_grace, Duration::from_secs(600));
    assert_eq!(c.region_offline_grace, Duration::from_secs(600));
    assert!(!c.allow_private_channel_targets);
    assert!(c.fast_confirmation, "fast confirmation is on by default");
    assert_eq!(c.store_cache_bytes, 256 * 1024 * 1024);
    assert_eq!(
        (
            c.delivery_retry_initial,
            c.delivery_retry_max,
            c.delivery_retry_horizon
        ),
        (
            Duration::from_secs(10),
            Duration::from_secs(3600),
            Duration::from_secs(86_400)
        )
    );
    let file: FileConfig = toml::from_str(
        "allow_private_channel_targets = true\nregion_offline_grace = \"1s\"\ndelivery_retry_initial = \"100ms\"\ndelivery_retry_max = \"400ms\"\n",
    )
    .unwrap();
    let c = Config::merge(args(), file).unwrap();
    assert!(c.allow_private_channel_targets);
    assert_eq!(c.region_offline_grace, Duration::from_secs(1));
    assert_eq!(c.delivery_retry_max, Duration::from_millis(400));
    assert_eq!(c.listen, "127.0.0.1:7400".parse().unwrap());
}

#[test]
fn fast_confirmation_is_a_boolean_from_the_file_or_the_flag() {
    let off = || toml::from_str::<FileConfig>("fast_confirmation = false").unwrap();
    assert!(!Config::merge(args(), off()).unwrap().fast_confirmation);
    let flag_on = Args {
        fast_confirmation: Some(true),
        ..args()
    };
    assert!(
        Config::merge(flag_on, off()).unwrap().fast_confirmation,
        "the flag beats the file"
    );
    let parsed =
        Args::try_parse_from(["portwatch-coordinator", "--fast-confirmation", "false"]).unwrap();
    assert_eq!(parsed.fast_confirmation, Some(false));

    // Anything but a boolean is refused, naming the key (file) or the flag.
    for bad in ["fast_confirmation = \"no\"", "fast_confirmation = 0"] {
        let e = toml::from_str::<FileConfig>(bad).unwrap_err().to_string();
        assert!(e.contains("fast_confirmation"), "{bad}: {e}");
    }
    let e = Args::try_parse_from(["portwatch-coordinator", "--fast-confirmation", "maybe"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--fast-confirmation"), "{e}");
}

#[test]
fn connection_limits_have_defaults_flags_and_bounds() {
    let file = |t: &str| toml::from_str::<FileConfig>(t).unwrap();
    let c = Config::merge(args(), FileConfig::default()).unwrap();
    assert_eq!(
        c.connections,
        ConnectionLimits {
            tls_handshake_timeout: Duration::from_secs(10),
            unauthenticated_idle_timeout: Duration::from_secs(30),
            max_connections_per_ip: 64,
            max_connections: 10_000,
        }
    );
    let c = Config::merge(
        Args {
            max_connections_per_ip: Some(8),
            ..args()
        },
        file(
            "tls_handshake_timeout = \"2s\"\nunauthenticated_idle_timeout = \"1m\"\nmax_connections_per_ip = 500\nmax_connections = 100\n",
        ),
    )
    .unwrap();
    assert_eq!(c.connections.tls_handshake_timeout, Duration::from_secs(2));
    assert_eq!(
        c.connections.unauthenticated_idle_timeout,
        Duration::from_secs(60)
    );
    assert_eq!(c.connections.max_connections_per_ip, 8, "the flag wins");
    assert_eq!(c.connections.max_connections, 100);
    let parsed = Args::try_parse_from([
        "portwatch-coordinator",
        "--tls-handshake-timeout",
        "3s",
        "--unauthenticated-idle-timeout",
        "20s",
        "--max-connections-per-ip",
        "16",
        "--max-connections",
        "2000",
    ])
    .unwrap();
    assert_eq!(parsed.tls_handshake_timeout.as_deref(), Some("3s"));
    assert_eq!(parsed.unauthenticated_idle_timeout.as_deref(), Some("20s"));
    assert_eq!(parsed.max_connections_per_ip, Some(16));
    assert_eq!(parsed.max_connections, Some(2000));

    for (bad, key, why) in [
        (
            "tls_handshake_timeout = \"10ms\"",
            "tls_handshake_timeout",
            "out of range",
        ),
        (
            "tls_handshake_timeout = \"soon\"",
            "tls_handshake_timeout",
            "soon",
        ),
        (
            "unauthenticated_idle_timeout = \"2h\"",
            "unauthenticated_idle_timeout",
            "out of range",
        ),
        (
            "max_connections_per_ip = 0",
            "max_connections_per_ip",
            "out of range",
        ),
        ("max_connections = 0", "max_connections", "out of range"),
        (
            "max_connections = 2000000",
            "max_connections",
            "out of range",
        ),
    ] {
        let e = Config::merge(args(), file(bad)).unwrap_err();
        assert_eq!(e.key, key, "{bad}: {e}");
        assert!(e.to_string().contains(why), "{bad}: {e}");
    }
    for bad in ["max_connections = -1", "max_connections_per_ip = \"many\""] {
        let e = toml::from_str::<FileConfig>(bad).unwrap_err().to_string();
        assert!(e.contains("max_connections"), "{bad}: {e}");
    }
}

#[test]
fn store_cache_is_mebibytes_within_bounds() {
    let file = |t: &str| toml::from_str::<FileConfig>(t).unwrap();
    let c = Config::merge(args(), file("store_cache_mib = 64")).unwrap();
    assert_eq!(c.store_cache_bytes, 64 * 1024 * 1024);
    for bad in ["store_cache_mib = 8", "store_cache_mib = 100000"] {
        let e = Config::merge(args(), file(bad)).unwrap_err().to_string();
        assert!(
            e.contains("store_cache_mib") && e.contains("out of range"),
            "{bad}: {e}"
        );
    }
    let e = toml::from_str::<FileConfig>("store_cache_mib = \"big\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("store_cache_mib"), "{e}");
}

#[test]
fn errors_name_the_key() {
    let cases: Vec<(Args, &str, &str)> = vec![
        (
            Args {
                data_dir: None,
                ..args()
            },
            "",
            "data_dir",
        ),
        (
            Args {
                operator_token: Some("short".into()),
                ..args()
            },
            "",
            "operator_token",
        ),
        (
            Args {
                insecure_plaintext: false,
                ..args()
            },
            "",
            "tls_cert",
        ),
        (
            Args {
                listen: Some("0.0.0.0:7400".parse().unwrap()),
                ..args()
            },
            "",
            "insecure_plaintext",
        ),
        (
            Args {
                tls_cert: Some("c.pem".into()),
                ..args()
            },
            "",
            "tls_key",
        ),
        (args(), "retention = \"soon\"", "retention"),
        (
            args(),
            "heartbeat_interval = \"20s\"\nheartbeat_timeout = \"10s\"",
            "heartbeat_timeout",
        ),
        (args(), "log_format = \"xml\"", "log_format"),
        (
            args(),
            "delivery_retry_initial = \"10s\"\ndelivery_retry_max = \"1s\"",
            "delivery_retry_max",
        ),
        (
            args(),
            "delivery_retry_horizon = \"90d\"",
            "delivery_retry_horizon",
        ),
        (
            args(),
            "region_offline_grace = \"never\"",
            "region_offline_grace",
        ),
    ];
    for (a, toml_text, key) in cases {
        let file: FileConfig = toml::from_str(toml_text).unwrap();
        let e = Config::merge(a, file).unwrap_err();
        assert_eq!(e.key, key, "{e}");
    }
    assert!(
        toml::from_str::<FileConfig>("listen_addr = \"x\"").is_err(),
        "unknown keys are errors"
    );
}

#[test]
fn notify_ca_file_is_read_and_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let c = Config::merge(args(), FileConfig::default()).unwrap();
    assert_eq!(c.notify_ca, None, "the public roots only by default");

    let ca = rcgen::generate_simple_self_signed(vec!["smtp.internal".to_string()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["hooks.internal".to_string()]).unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, format!("{}{}", ca.cert.pem(), other.cert.pem())).unwrap();
    let file: FileConfig = toml::from_str(&format!(
        "notify_ca_file = {:?}",
        bundle.display().to_string()
    ))
    .unwrap();
    let c = Config::merge(args(), file).unwrap();
    let got = c.notify_ca.unwrap();
    assert_eq!(got.path, bundle);
    assert_eq!(
        got.certs,
        vec![ca.cert.der().clone(), other.cert.der().clone()]
    );

    let key_only = dir.path().join("key.pem");
    std::fs::write(&key_only, ca.signing_key.serialize_pem()).unwrap();
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for (path, want) in [
        (dir.path().join("missing.pem"), "os error 2"),
        (key_only, "no certificate"),
        (broken, "certificate 1 is not usable as a CA"),
    ] {
        let e = Config::merge(
            Args {
                notify_ca_file: Some(path.clone()),
                ..args()
            },
            FileConfig::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "notify_ca_file", "{e}");
        assert!(e.to_string().contains(want), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}

#[test]
fn postgres_settings_are_read_and_their_password_never_shown() {
    let args = Args {
        store: Some("postgres".into()),
        postgres_url: Some("postgres://pw:urlsecret@db.internal:5432/portwatch".into()),
        postgres_password: Some("envsecret".into()),
        postgres_pool_size: Some(3),
        operator_token: Some("0123456789abcdefg".into()),
        insecure_plaintext: true,
        ..Args::default()
    };
    let c = Config::merge(args, FileConfig::default()).unwrap();
    let StoreChoice::Postgres(pg) = &c.store else {
        panic!("not postgres: {:?}", c.store)
    };
    assert_eq!(pg.password.as_deref(), Some("envsecret"));
    assert_eq!(pg.pool_size, 3);
    assert!(c.data_dir.as_os_str().is_empty(), "no data_dir needed");
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("urlsecret") && !shown.contains("envsecret"),
        "{shown}"
    );

    // Without a URL, or with a store nobody knows: the key is named.
    let no_url = Args {
        store: Some("postgres".into()),
        operator_token: Some("0123456789abcdefg".into()),
        insecure_plaintext: true,
        ..Args::default()
    };
    let e = Config::merge(no_url, FileConfig::default()).unwrap_err();
    assert_eq!(e.key, "postgres_url", "{e}");
    let bad = Args {
        store: Some("mysql".into()),
        ..Args::default()
    };
    let e = Config::merge(bad, FileConfig::default()).unwrap_err();
    assert_eq!(e.key, "store", "{e}");
}
