//! The binary's edge, as an operator meets it: a bad configuration stops start-up with one line
//! naming the key or variable at fault, exit code 1, and no secret in it.

use std::process::{Command, Output};

/// Runs `bidorch args…` with exactly `env` (plus `PATH`).
fn bidorch(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bidorch"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("bidorch runs")
}

fn failed_with(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_worker_with_no_marketplace_names_the_key() {
    let err = failed_with(&bidorch(
        &["worker"],
        &[
            // Unreachable services: the configuration check comes before any of them.
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
            ("REDIS_URL", "redis://127.0.0.1:1/0"),
            ("DATABASE_URL", "postgres://app@127.0.0.1:1/x"),
        ],
    ));
    assert!(err.contains("marketplaces"), "{err}");
    assert!(err.contains("token_env"), "{err}");
}

#[test]
fn original_redis_variables_with_bad_values_name_the_variable() {
    for (var, value) in [
        ("REDIS_PORT", "six-three-seven-nine"),
        ("REDIS_DB", "first"),
    ] {
        let err = failed_with(&bidorch(
            &["config", "check"],
            &[("REDIS_HOST", "cache"), (var, value)],
        ));
        assert!(err.contains(var), "{var}: {err}");
    }
}

#[test]
fn a_database_password_in_the_query_string_is_never_shown() {
    let err = failed_with(&bidorch(
        &["migrate"],
        &[(
            "DATABASE_URL",
            "postgres://app@127.0.0.1:1/bids?password=hunter2-secret&sslpassword=hunter2-secret",
        )],
    ));
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("127.0.0.1:1"), "names the database: {err}");
}

#[test]
fn a_huge_duration_is_an_error_not_a_panic() {
    let err = failed_with(&bidorch(
        &["config", "check"],
        &[("BIDORCH__LOCK__TTL", "584942417355y")],
    ));
    assert!(err.contains("lock.ttl"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Secrets in every URL-valued key, in every position of a list, in userinfo and in queries.
const SECRET_ENV: &[(&str, &str)] = &[
    ("AMQP_URL", "amqp://bidorch:s3cr3t-amqp@broker:5672/%2f"),
    (
        "REDIS_URL",
        "redis://:s3cr3t-node1@n1,redis://:s3cr3t-node2@n2:7001,redis://u:s3cr3t-node3@n3:7002",
    ),
    (
        "DATABASE_URL",
        "postgres://app:s3cr3t-db@db/bids?sslpassword=s3cr3t-sslpw&application_name=x",
    ),
    (
        "BIDORCH__MARKETPLACES__UPWORK__BASE_URL",
        "https://gw.example/upwork?api_key=s3cr3t-apikey&region=eu&k=9f8e7d6c5b4a3928s3cr3t",
    ),
    (
        "BIDORCH__MARKETPLACES__UPWORK__TOKEN_ENV",
        "BIDORCH_UPWORK_TOKEN",
    ),
    ("BIDORCH_UPWORK_TOKEN", "s3cr3t-token"),
];

#[test]
fn config_check_shows_no_secret_of_any_url_valued_key() {
    let output = bidorch(&["config", "check"], SECRET_ENV);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{shown}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    // What is not secret stays readable.
    for visible in [
        "broker:5672",
        "n2:7001",
        "n3:7002",
        "region=eu",
        "gw.example/upwork",
    ] {
        assert!(shown.contains(visible), "{visible}: {shown}");
    }
}

#[test]
fn credentials_in_a_marketplace_base_url_stop_start_naming_the_key_not_the_secret() {
    for base_url in [
        "https://user:s3cr3t-pw@gw.example/upwork",
        "https://s3cr3t-tokenuser@gw.example/upwork",
    ] {
        let mut env = SECRET_ENV.to_vec();
        env.push(("BIDORCH__MARKETPLACES__UPWORK__BASE_URL", base_url));
        let err = failed_with(&bidorch(&["config", "check"], &env));
        assert!(err.contains("marketplaces.upwork.base_url"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }
}

#[test]
fn a_production_worker_refuses_the_sandbox_marketplace_and_a_sqlite_ledger() {
    let marketplace = [
        (
            "BIDORCH__MARKETPLACES__UPWORK__BASE_URL",
            "http://127.0.0.1:1/upwork",
        ),
        ("BIDORCH__MARKETPLACES__UPWORK__TOKEN_ENV", "UPWORK_TOKEN"),
        ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
    ];
    for (var, value, key) in [
        ("BIDORCH__MARKETPLACE__KIND", "sandbox", "marketplace.kind"),
        ("BIDORCH__DATABASE__KIND", "sqlite", "database.kind"),
    ] {
        let mut env = marketplace.to_vec();
        env.push((var, value));
        if var == "BIDORCH__DATABASE__KIND" {
            env.push(("DATABASE_URL", "sqlite::memory:"));
        }
        let err = failed_with(&bidorch(&["worker"], &env));
        assert!(
            err.contains("refusing to start") && err.contains(key),
            "{err}"
        );
    }
}

/// Runs `bidorch args…` with `env`, many posting events on standard input (written from a
/// thread of their own, as a producer would), and standard output a pipe that is closed after
/// `keep` bytes were read (as `| head -c KEEP` does).
fn bidorch_into_closed_pipe(args: &[&str], env: &[(&str, &str)], keep: usize) -> Output {
    use std::io::{Read as _, Write as _};
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bidorch"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bidorch runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let producer = std::thread::spawn(move || {
        // Enough lines that the output cannot all fit in the pipe before it is closed.
        let line = br#"{"event_id":"e","marketplace":"upwork","posting_id":"p","title":"t"}"#;
        for _ in 0..20_000 {
            if stdin
                .write_all(line)
                .and_then(|()| stdin.write_all(b"\n"))
                .is_err()
            {
                break;
            }
        }
    });
    let mut stdout = child.stdout.take().expect("stdout");
    let mut head = vec![0; keep];
    let _ = stdout.read_exact(&mut head);
    drop(stdout);
    let output = child.wait_with_output().expect("bidorch exits");
    producer.join().expect("the producer ends");
    output
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let marketplace = [
        (
            "BIDORCH__MARKETPLACES__UPWORK__BASE_URL",
            "http://127.0.0.1:1/upwork",
        ),
        ("BIDORCH__MARKETPLACES__UPWORK__TOKEN_ENV", "UPWORK_TOKEN"),
    ];
    for args in [&["config", "check"][..], &["policy", "check", "-"][..]] {
        let output = bidorch_into_closed_pipe(args, &marketplace, 1);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(output.status.success(), "{args:?}: {output:?}");
    }
}

#[test]
fn control_characters_from_events_are_shown_escaped() {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bidorch"))
        .args(["policy", "check", "-"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs([
            (
                "BIDORCH__MARKETPLACES__UPWORK__BASE_URL",
                "http://127.0.0.1:1/upwork",
            ),
            ("BIDORCH__MARKETPLACES__UPWORK__TOKEN_ENV", "UPWORK_TOKEN"),
            ("BIDORCH__BIDDING__BLOCKED_CLIENT_COUNTRIES", "XX"),
            ("BIDORCH__BIDDING__ALLOWED_CLIENT_COUNTRIES", "US"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("bidorch runs");
    let event = r#"{"event_id":"e","marketplace":"upwork","posting_id":"p","title":"t",
        "budget":{"max":"500","currency":"USD"},"client":{"country":"\u001b[2J\nline 99: forged"}}"#
        .replace('\n', " ");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{event}").expect("write the event");
    drop(stdin);
    let output = child.wait_with_output().expect("bidorch exits");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(!shown.contains('\u{1b}'), "{shown:?}");
    assert!(
        !shown.contains("\nline 99"),
        "a forged output line: {shown:?}"
    );
    // (Country codes are shown upper-cased.)
    assert!(
        shown
            .to_lowercase()
            .contains("\\u{1b}[2j\\nline 99: forged"),
        "{shown:?}"
    );
}

#[tokio::test]
async fn config_check_live_asks_every_dependency_and_each_marketplaces_api() {
    use crate::support;
    use bidorch::marketplace::sandbox::{SandboxOptions, SandboxServer};
    if !(support::amqp_available().await
        && support::redis_available().await
        && support::postgres_available().await)
    {
        return; // skipped, said by the checks
    }
    let server = SandboxServer::start(SandboxOptions {
        token: Some("live-token-9d2".to_owned()),
        ..SandboxOptions::default()
    })
    .await
    .expect("the sandbox starts");
    let base_url = format!("{}/fl", server.url());
    let run = |token: &'static str| {
        let (amqp, redis, db, base) = (
            support::amqp_url(),
            support::redis_url(),
            support::database_url(),
            base_url.clone(),
        );
        tokio::task::spawn_blocking(move || {
            bidorch(
                &["config", "check", "--live"],
                &[
                    ("AMQP_URL", &amqp),
                    ("REDIS_URL", &redis),
                    ("DATABASE_URL", &db),
                    ("BIDORCH__MARKETPLACES__FL__BASE_URL", &base),
                    ("BIDORCH__MARKETPLACES__FL__TOKEN_ENV", "FL_TOKEN"),
                    ("BIDORCH__MARKETPLACES__FL__API", "freelancer"),
                    ("FL_TOKEN", token),
                ],
            )
        })
    };
    let output = run("live-token-9d2").await.expect("bidorch ran");
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{shown}{output:?}");
    for line in [
        "# live: amqp ",
        "# live: redis ",
        "# live: postgres ",
        "# live: marketplace fl (freelancer API) ok: the token is accepted: user 4242",
    ] {
        assert!(shown.contains(line), "{line}: {shown}");
    }
    assert!(!shown.contains("FAILED"), "{shown}");
    assert_eq!(server.sandbox().stats().requests, 0, "no bid was placed");

    let output = run("revoked-token-61f").await.expect("bidorch ran");
    let err = failed_with(&output);
    let shown = format!("{}{err}", String::from_utf8_lossy(&output.stdout));
    assert!(
        shown.contains("# live: marketplace fl (freelancer API) FAILED: the token in `FL_TOKEN` was refused by /self (HTTP 401)"),
        "{shown}"
    );
    assert!(err.contains("1 of 4 live checks failed"), "{err}");
    assert!(!shown.contains("revoked-token-61f"), "{shown}");
}
