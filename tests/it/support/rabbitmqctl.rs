//! `rabbitmqctl`, for what AMQP cannot do or see: virtual hosts, closing connections, and a
//! queue's deliveries not yet settled.

/// Runs `rabbitmqctl args…` (or `$BIDORCH_RABBITMQCTL args…`); `Err` if it cannot run or fails.
pub async fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let command = std::env::var("BIDORCH_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
        let mut parts = command.split_whitespace();
        let program = parts.next().unwrap_or("rabbitmqctl").to_owned();
        let out = std::process::Command::new(&program)
            .args(parts)
            .args(&args)
            .output()
            .map_err(|e| format!("`{command}` cannot run: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`{command} {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    })
    .await
    .expect("rabbitmqctl task")
}

/// Deliveries of `queue` handed to a consumer and not yet settled (management figures: they may
/// lag a little, which only delays the check that polls them).
pub async fn unacked(vhost: &str, queue: &str) -> u64 {
    let listed = rabbitmqctl(&[
        "list_queues",
        "-p",
        vhost,
        "--quiet",
        "--no-table-headers",
        "name",
        "messages_unacknowledged",
    ])
    .await
    .expect("list_queues");
    listed
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(queue)).then(|| cols.next()?.parse().ok())?
        })
        .next()
        .unwrap_or(0)
}
