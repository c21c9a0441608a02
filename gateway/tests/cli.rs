//! The binary's command line, run for real.

use std::process::{Command, Output};

fn switchboard(args: &[&str]) -> Output {
    let dir = std::env::temp_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .current_dir(dir)
        // The tests must not inherit configuration from the machine.
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .env_remove("SWITCHBOARD_DEV")
        .env_remove("SWITCHBOARD_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output();
    match out {
        Ok(out) => out,
        Err(e) => panic!("cannot run switchboard: {e}"),
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_every_flag_with_env_and_default() {
    let out = switchboard(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env, default) in [
        ("--listen", "SWITCHBOARD_LISTEN", "127.0.0.1:3000"),
        ("--redis-url", "SWITCHBOARD_REDIS_URL", "unset"),
        ("--database-url", "SWITCHBOARD_DATABASE_URL", "sqlite://switchboard.db"),
        ("--jwt-secret", "SWITCHBOARD_JWT_SECRET", "unset"),
        ("--jwt-leeway", "SWITCHBOARD_JWT_LEEWAY", "5s"),
        ("--access", "SWITCHBOARD_ACCESS", "members"),
        ("--presence-ttl", "SWITCHBOARD_PRESENCE_TTL", "30s"),
        ("--socketio-profile", "SWITCHBOARD_SOCKETIO_PROFILE", "/=alt,/chat=chat"),
        ("--max-payload", "SWITCHBOARD_MAX_PAYLOAD", "1MB"),
        ("--max-outbound-queue", "SWITCHBOARD_MAX_OUTBOUND_QUEUE", "1024"),
        ("--rate-limit", "SWITCHBOARD_RATE_LIMIT", "50/s,burst=200"),
        ("--cors-origins", "SWITCHBOARD_CORS_ORIGINS", "none"),
        ("--dev", "SWITCHBOARD_DEV", "off"),
        ("--jwt-allow-no-exp", "SWITCHBOARD_JWT_ALLOW_NO_EXP", "off"),
        ("--user-rate-limit", "SWITCHBOARD_USER_RATE_LIMIT", "100/s,burst=400"),
        ("--rest-rate-limit", "SWITCHBOARD_REST_RATE_LIMIT", "20/s,burst=100"),
        (
            "--max-rooms-per-connection",
            "SWITCHBOARD_MAX_ROOMS_PER_CONNECTION",
            "1000",
        ),
        (
            "--max-connections-per-user",
            "SWITCHBOARD_MAX_CONNECTIONS_PER_USER",
            "50",
        ),
        ("--max-page-bytes", "SWITCHBOARD_MAX_PAGE_BYTES", "1MiB"),
        ("--otlp-endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", "unset"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(help.contains(env), "{env} missing from --help");
        assert!(
            help.contains(&format!("[default: {default}")),
            "default of {flag} missing"
        );
    }
    for sub in ["serve", "token"] {
        assert!(help.contains(sub), "subcommand {sub} missing");
    }
}

#[test]
fn serve_without_auth_is_refused_naming_the_flags() {
    let out = switchboard(&["serve", "--listen", "127.0.0.1:0", "--access", "open"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("--jwt-secret") && err.contains("--dev"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn an_otlp_endpoint_that_is_not_http_is_refused_naming_the_flag() {
    let out = switchboard(&[
        "--jwt-secret",
        "s",
        "--access",
        "open",
        "--otlp-endpoint",
        "grpc://collector:4317",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("--otlp-endpoint"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn bad_listen_is_a_one_line_error_naming_the_flag() {
    let out = switchboard(&["--listen", "not-an-address", "--jwt-secret", "s", "--access", "open"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("--listen"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn bad_values_name_their_flag_also_from_env() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--jwt-secret", "s", "--access", "open"])
        .env("SWITCHBOARD_MAX_PAYLOAD", "huge")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => panic!("cannot run switchboard: {e}"),
    };
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--max-payload"), "{}", stderr(&out));
}

#[test]
fn migrate_creates_the_sqlite_database() {
    let dir = std::env::temp_dir().join(format!("sb-migrate-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let db = dir.join("fresh.db");
    let url = format!("sqlite://{}", db.display());
    let out = switchboard(&["migrate", "--database-url", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(db.is_file());
    // Applying again is a no-op.
    let again = switchboard(&["migrate", "--database-url", &url]);
    assert!(again.status.success(), "{}", stderr(&again));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn token_prints_a_jwt_that_verifies() -> Result<(), Box<dyn std::error::Error>> {
    let out = switchboard(&[
        "token",
        "--jwt-secret",
        "sekrit",
        "--user",
        "alice",
        "--ttl",
        "10m",
        "--claim",
        "conversations=a,team-*",
        "--claim",
        "admin=true",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_aud = false;
    let data =
        jsonwebtoken::decode::<serde_json::Value>(&token, &jsonwebtoken::DecodingKey::from_secret(b"sekrit"), &v)?;
    let claims = data.claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["admin"], true);
    assert_eq!(claims["conversations"], serde_json::json!(["a", "team-*"]));
    let ttl = claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0);
    assert_eq!(ttl, 600);
    Ok(())
}

#[test]
fn token_without_a_key_is_refused() {
    let out = switchboard(&["token", "--user", "alice"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--jwt-secret"), "{}", stderr(&out));
}
