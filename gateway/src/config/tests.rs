//! Option validation, one flag at a time, and the file under flags and env.

use super::parse::parse_rate_limit;
use super::*;
use std::path::Path;

fn opts(f: impl FnOnce(&mut Options)) -> Options {
    let mut o = Options {
        jwt_secret: Some("s".into()),
        access: Some("open".into()),
        ..Options::default()
    };
    f(&mut o);
    o
}

fn config(o: Options) -> Result<Config, ConfigError> {
    Config::from_options(&o, Path::new("/nonexistent"))
}

#[test]
fn defaults() -> Result<(), ConfigError> {
    let c = config(opts(|_| {}))?;
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.socketio.max_payload, 1_000_000);
    assert_eq!(c.max_message_bytes, 8192);
    assert_eq!(
        c.socketio.rate_limit,
        RateLimit {
            per_second: 50.0,
            burst: 200
        }
    );
    assert_eq!(
        c.socketio.namespaces,
        vec![
            ("/".to_owned(), ProfileName::Alt),
            ("/chat".to_owned(), ProfileName::Chat)
        ]
    );
    assert!(c.auth.loopback_trusted);
    Ok(())
}

#[test]
fn profile_entries_replace_named_namespaces_only() -> Result<(), ConfigError> {
    let c = config(opts(|o| o.socketio_profile = Some("/=bam,/x=alt".into())))?;
    assert_eq!(
        c.socketio.namespaces,
        vec![
            ("/".to_owned(), ProfileName::Bam),
            ("/chat".to_owned(), ProfileName::Chat),
            ("/x".to_owned(), ProfileName::Alt)
        ]
    );
    Ok(())
}

#[test]
fn errors_name_their_flag() {
    let cases: Vec<(&str, Options)> = vec![
        ("--listen", opts(|o| o.listen = Some("nowhere".into()))),
        ("--access", opts(|o| o.access = Some("everyone".into()))),
        ("--max-payload", opts(|o| o.max_payload = Some("lots".into()))),
        ("--rate-limit", opts(|o| o.rate_limit = Some("fast".into()))),
        (
            "--socketio-profile",
            opts(|o| o.socketio_profile = Some("/=xyz".into())),
        ),
        ("--cors-origins", opts(|o| o.cors_origins = Some("example.com".into()))),
        ("--presence-ttl", opts(|o| o.presence_ttl = Some("soon".into()))),
        ("--worker-threads", opts(|o| o.worker_threads = Some("0".into()))),
        ("--worker-threads", opts(|o| o.worker_threads = Some("many".into()))),
        ("--jwt-secret", opts(|o| o.jwt_secret = Some(String::new()))),
    ];
    for (flag, o) in cases {
        let err = config(o).map(|_| ()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(flag), "{flag}: {err}");
        assert!(!err.contains('\n'), "{flag}: {err}");
    }
}

#[test]
fn no_auth_is_refused_naming_the_flags() {
    let err = config(opts(|o| o.jwt_secret = None))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("--jwt-secret") && err.contains("--dev"), "{err}");
}

#[test]
fn members_mode_is_the_default() -> Result<(), ConfigError> {
    assert_eq!(config(opts(|o| o.access = None))?.access, AccessMode::Members);
    Ok(())
}

#[test]
fn rate_limit_forms() -> Result<(), ConfigError> {
    assert_eq!(
        parse_rate_limit("rate-limit", "10/s")?,
        RateLimit {
            per_second: 10.0,
            burst: 10
        }
    );
    assert_eq!(
        parse_rate_limit("rate-limit", "120/m,burst=5")?,
        RateLimit {
            per_second: 2.0,
            burst: 5
        }
    );
    assert!(parse_rate_limit("rate-limit", "0/s").is_err());
    Ok(())
}

#[test]
fn file_sits_under_flags_and_env() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("switchboard.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:4000\"\nmax-outbound-queue = 64\naccess = \"claims\"\n",
    )?;
    let o = opts(|o| {
        o.config = Some(file.clone());
        o.access = Some("open".into());
    })
    .layered()?;
    let c = config(o)?;
    assert_eq!(c.listen.port(), 4000);
    assert_eq!(c.socketio.max_outbound_queue, 64);
    assert_eq!(c.access, AccessMode::Open);

    std::fs::write(&file, "listne = \"x\"\n")?;
    let err = opts(|o| o.config = Some(file.clone()))
        .layered()
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("listne")));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Issue 12: the per-client limits, their defaults, and refusals naming their flag.
#[test]
fn limits_and_their_flags() -> Result<(), ConfigError> {
    let c = config(opts(|_| {}))?;
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.limits.max_page_bytes, 1 << 20);
    assert!(c.auth.jwt.as_ref().is_some_and(|j| j.require_exp));
    let c = config(opts(|o| {
        o.max_page_bytes = Some("64KiB".into());
        o.max_rooms_per_connection = Some("7".into());
        o.max_connections_per_user = Some("3".into());
        o.user_rate_limit = Some("10/s,burst=20".into());
        o.rest_rate_limit = Some("1/m".into());
        o.jwt_allow_no_exp = Some(true);
    }))?;
    assert_eq!(
        (
            c.limits.max_page_bytes,
            c.limits.max_rooms_per_connection,
            c.limits.max_connections_per_user
        ),
        (65_536, 7, 3)
    );
    assert_eq!(c.limits.user_rate_limit.burst, 20);
    assert_eq!(c.limits.rest_rate_limit.burst, 1);
    assert!(c.auth.jwt.as_ref().is_some_and(|j| !j.require_exp));
    for (o, flag) in [
        (opts(|o| o.max_page_bytes = Some("4KiB".into())), "--max-page-bytes"),
        (
            opts(|o| o.max_rooms_per_connection = Some("0".into())),
            "--max-rooms-per-connection",
        ),
        (
            opts(|o| o.max_connections_per_user = Some("many".into())),
            "--max-connections-per-user",
        ),
        (opts(|o| o.user_rate_limit = Some("fast".into())), "--user-rate-limit"),
        (opts(|o| o.rest_rate_limit = Some("0/s".into())), "--rest-rate-limit"),
    ] {
        let err = config(o).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(flag), "{flag}: {err}");
    }
    // --dev accepts an IPv4-mapped loopback address as loopback.
    let dev = Config::from_options(
        &opts(|o| {
            o.dev = Some(true);
            o.listen = Some("[::ffff:127.0.0.1]:0".into());
        }),
        &std::env::temp_dir().join(format!("sb-dev-{}", std::process::id())),
    );
    assert!(dev.is_ok() || dev.is_err_and(|e| !e.to_string().contains("--listen")));
    Ok(())
}
