//! `bidorch healthcheck`, as a container runtime runs it next to a worker: exit 0 while the
//! worker is ready, 1 with the reason otherwise.

use std::process::Output;

use bidorch::marketplace::sandbox::SandboxOptions;

use crate::support;
use support::process::free_addr;
use support::scenario::Scenario;

async fn healthcheck(env: Vec<(String, String)>, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_bidorch"))
            .arg("healthcheck")
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env)
            .output()
            .expect("bidorch runs")
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_for_a_ready_worker_and_1_for_none() {
    let Some(mut scenario) = Scenario::start("health", SandboxOptions::default(), &[]).await else {
        return; // skipped, said by the check
    };
    scenario.spawn_worker("w");
    scenario.wait_ready().await;
    let addr = scenario.workers[0].addr.clone();

    // As the compose file runs it: the worker's own configuration says where to ask.
    let env = scenario.env_with(&[("BIDORCH__HTTP__ADDR", addr.clone())]);
    let ready = healthcheck(env, &[]).await;
    assert_eq!(ready.status.code(), Some(0), "{ready:?}");
    assert!(String::from_utf8_lossy(&ready.stdout).contains("ready"));

    let url = format!("http://{addr}/readyz");
    let by_url = healthcheck(Vec::new(), &["--url", &url]).await;
    assert_eq!(
        by_url.status.code(),
        Some(0),
        "--url needs no configuration: {by_url:?}"
    );

    let nobody = format!("http://{}/readyz", free_addr());
    let down = healthcheck(Vec::new(), &["--url", &nobody, "--timeout", "1s"]).await;
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert!(String::from_utf8_lossy(&down.stderr).contains("did not answer"));
    scenario.stop().await;
}
