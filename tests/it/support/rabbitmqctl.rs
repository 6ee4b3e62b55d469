//! `rabbitmqctl`, for what AMQP cannot do or see: virtual hosts, closing connections, and a
//! queue's deliveries not yet settled.

/// Runs `rabbitmqctl args…` (or `$BIDORCH_RABBITMQCTL args…`); `Err` if it cannot run or fails.
pub async fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rabbitmqctl_blocking(&args)
    })
    .await
    .expect("rabbitmqctl task")
}

/// [`rabbitmqctl`], blocking the calling thread (for `Drop`).
pub fn rabbitmqctl_blocking(args: &[&str]) -> Result<String, String> {
    let command = std::env::var("BIDORCH_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let mut parts = command.split_whitespace();
    let program = parts.next().unwrap_or("rabbitmqctl").to_owned();
    let out = std::process::Command::new(&program)
        .args(parts)
        .args(args)
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
}

/// A virtual host of the test's own, deleted (with all its queues) when dropped, also when the
/// test fails halfway.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    /// Creates the vhost and gives `AMQP_URL`'s user (default `guest`) full permissions on it.
    /// `None` (after printing SKIPPED) when rabbitmqctl is unavailable and services are not
    /// required.
    pub async fn create(name: &str) -> Option<Self> {
        let user = match url::Url::parse(&super::amqp_url()) {
            Ok(u) if !u.username().is_empty() => u.username().to_owned(),
            _ => "guest".to_owned(),
        };
        if let Err(why) = rabbitmqctl(&["add_vhost", name]).await {
            super::skip(&format!("{why} (run as root, or set BIDORCH_RABBITMQCTL)"));
            return None;
        }
        let vhost = Self {
            name: name.to_owned(),
        };
        rabbitmqctl(&["set_permissions", "-p", name, &user, ".*", ".*", ".*"])
            .await
            .expect("set_permissions");
        Some(vhost)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = rabbitmqctl_blocking(&["delete_vhost", &self.name]);
    }
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

/// A RabbitMQ user of the test's own, with a password of its own, allowed on the default vhost
/// only the exchanges and queues whose names start with `prefix` (a scenario's names do) and the
/// default exchange; deleted when dropped.
pub struct User {
    pub name: String,
    pub password: String,
}

impl User {
    /// Creates the user; `None` (after printing SKIPPED) when rabbitmqctl is unavailable and
    /// services are not required.
    pub async fn create(prefix: &str) -> Option<Self> {
        let name = super::unique(&format!("{prefix}-user"));
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        if let Err(why) = rabbitmqctl(&["add_user", &name, &password]).await {
            super::skip(&format!("{why} (run as root, or set BIDORCH_RABBITMQCTL)"));
            return None;
        }
        let user = Self { name, password };
        let allowed = format!("^({}.*|amq\\.default)$", regex_escape(prefix));
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            "/",
            &user.name,
            &allowed,
            &allowed,
            &allowed,
        ])
        .await
        .expect("set_permissions");
        Some(user)
    }

    /// `AMQP_URL` with this user's credentials on the default vhost.
    pub fn amqp_url(&self) -> String {
        let mut url = url::Url::parse(&super::amqp_url()).expect("AMQP_URL parses");
        url.set_username(&self.name).expect("a user name fits");
        url.set_password(Some(&self.password))
            .expect("a password fits");
        url.to_string()
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = rabbitmqctl_blocking(&["delete_user", &self.name]);
    }
}
