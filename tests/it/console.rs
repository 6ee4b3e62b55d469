//! The operators' console as an operator uses it: a `bidorch console` process over the real
//! services and separate `bidorch worker` processes, driven from a real headless Chromium over
//! WebDriver. The status shows a pause and its reason; pausing from the page stops the workers
//! bidding on that marketplace (every worker reports the new pause generation; its postings
//! come back `marketplace_paused` and no request reaches the sandbox); a search finds a posting
//! and its timeline shows the attempts; resuming lets each held posting be bid once. A POST
//! without the session's CSRF token is refused, and a console on another address than loopback
//! without a token does not start.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bidorch::marketplace::sandbox::SandboxOptions;

use crate::support;
use support::browser::Browser;
use support::queue::eventually;
use support::scenario::{Scenario, load};

/// A `bidorch console` process on a free loopback port, killed on drop.
struct ConsoleProcess {
    child: Child,
    url: String,
}

impl ConsoleProcess {
    async fn start(scenario: &Scenario, extra: &[(&str, String)]) -> Self {
        let addr = format!("127.0.0.1:{}", support::free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_bidorch"))
            .args(["console", "--addr", &addr])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(scenario.env_with(extra))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bidorch console starts");
        let url = format!("http://{addr}");
        let probe = format!("{url}/login");
        eventually(Duration::from_secs(30), "the console answers", || async {
            support::http_get(&probe).await.is_ok()
        })
        .await;
        Self { child, url }
    }
}

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn posting(marketplace: &str, id: &str) -> String {
    serde_json::json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "marketplace": marketplace,
        "posting_id": id,
        "title": "Console test posting",
        "budget": {"min": 10, "max": "900.00", "currency": "USD"},
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pauses_searches_and_resumes_from_the_console_in_a_browser() {
    let Some(browser) = Browser::start().await else {
        return; // skipped, said by the check
    };
    let Some(mut scenario) = Scenario::start("console", SandboxOptions::default(), &[]).await
    else {
        return; // skipped, said by the check
    };
    for name in ["a", "b"] {
        scenario.spawn_worker(name);
    }
    scenario.wait_ready().await;
    let first = load("console", 10, 1);
    scenario.publish(&first.events).await;
    scenario
        .wait_settled(&first, Duration::from_secs(120))
        .await;
    let console = ConsoleProcess::start(&scenario, &[]).await;

    // The status page: both marketplaces bidding, both workers seen.
    browser.goto(&console.url).await;
    let page = browser.text().await;
    assert!(
        page.contains("Marketplaces") && page.contains("bidding"),
        "{page}"
    );

    // Pause upwork from the page.
    let before = scenario
        .ledger
        .controls
        .pause_state()
        .await
        .unwrap()
        .generation;
    browser
        .fill(
            "#pause-upwork input[name=reason]",
            "client dispute, console test",
        )
        .await;
    browser.click("#pause-upwork button").await;
    let page = browser.until_text("Paused upwork").await;
    assert!(
        page.contains("paused by hand") && page.contains("client dispute, console test"),
        "the status shows the pause and its reason: {page}"
    );
    assert!(page.contains("by loopback"), "who paused: {page}");
    let applied = bidorch::control::await_applied(
        &*scenario.ledger.controls,
        before + 1,
        Duration::from_secs(10),
    )
    .await
    .expect("the workers' reports");
    assert!(applied.pending.is_empty(), "{applied:?}");
    assert_eq!(applied.applied.len(), 2, "{applied:?}");

    // A posting for the paused marketplace waits: no request reaches it.
    let held = posting("upwork", "held_1");
    let event = bidorch::publish::OutgoingEvent::parse(held).expect("valid");
    scenario.publish(std::slice::from_ref(&event)).await;
    eventually(Duration::from_secs(60), "a worker holds it back", || async {
        let mut held_back = 0.0;
        for w in &scenario.workers {
            held_back += w
                .metric("bidorch_outcomes_total{marketplace=\"upwork\",outcome=\"marketplace_paused\"}")
                .await
                .unwrap_or(0.0);
        }
        held_back > 0.0
    })
    .await;
    let held_key = support::key("upwork", "held_1");
    assert_eq!(
        scenario
            .sandbox
            .stats()
            .postings
            .get(&held_key.to_string())
            .map_or(0, |p| p.requests),
        0,
        "no call to a paused marketplace"
    );

    // Search: by key prefix, then the timeline.
    browser.goto(&format!("{}/postings", console.url)).await;
    browser
        .fill("#search input[name=prefix]", "console_000")
        .await;
    browser.click("#search button").await;
    browser.until_text("upwork:console_0000").await;
    browser.click("a[href*='console_0000']").await;
    browser.until_text("Timeline (1 attempts)").await;
    let timeline = browser
        .client
        .find(fantoccini::Locator::Css("#timeline"))
        .await
        .expect("the timeline")
        .text()
        .await
        .expect("its text");
    assert!(
        timeline.contains("send") && timeline.contains("placed"),
        "the attempt and its result: {timeline}"
    );

    if let Some(path) = std::env::var_os("BIDORCH_CONSOLE_SCREENSHOT") {
        browser.goto(&console.url).await;
        std::fs::write(path, browser.screenshot().await).expect("the screenshot is written");
    }

    // Resume: the held posting is bid, once.
    browser.goto(&console.url).await;
    browser.click("#resume-upwork button").await;
    browser.until_text("Resumed upwork").await;
    let sandbox = scenario.sandbox.clone();
    eventually(
        Duration::from_secs(60),
        "the held posting is bid",
        || async {
            sandbox
                .stats()
                .postings
                .get(&held_key.to_string())
                .is_some_and(|p| p.bids == 1)
        },
    )
    .await;
    let history = scenario.ledger.controls.history(5).await.expect("history");
    assert_eq!(history[0].action, "resume");
    assert_eq!(history[1].action, "pause");
    assert_eq!(history[1].who, "loopback");
    browser.close().await;
    drop(console);
    scenario.stop().await;
}

#[tokio::test]
async fn a_post_without_the_sessions_csrf_token_is_refused_and_changes_nothing() {
    let Some(scenario) = Scenario::start("csrf", SandboxOptions::default(), &[]).await else {
        return; // skipped, said by the check
    };
    let console = ConsoleProcess::start(&scenario, &[]).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client.get(&console.url).send().await.expect("the status");
    let cookie = page
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let before = scenario.ledger.controls.pause_state().await.unwrap();
    for form in [
        "scope=upwork&reason=forged",
        "scope=upwork&reason=forged&csrf=0000000000000000",
    ] {
        let answer = client
            .post(format!("{}/pause", console.url))
            .header(reqwest::header::COOKIE, &cookie)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status().as_u16(), 403, "{form}");
    }
    // Another site's form carries no cookie at all (SameSite=Strict): nothing to act as.
    let anonymous = client
        .post(format!("{}/pause", console.url))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body("scope=upwork&reason=forged")
        .send()
        .await
        .expect("an answer");
    assert_eq!(anonymous.status().as_u16(), 403);
    assert_eq!(
        scenario.ledger.controls.pause_state().await.unwrap(),
        before,
        "nothing was paused"
    );
}

#[tokio::test]
async fn a_console_off_loopback_needs_a_token_and_signs_people_in_with_it() {
    let Some(scenario) = Scenario::start("cauth", SandboxOptions::default(), &[]).await else {
        return; // skipped, said by the check
    };
    let refused = Command::new(env!("CARGO_BIN_EXE_bidorch"))
        .args(["console", "--addr", "0.0.0.0:0"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(scenario.env_with(&[]))
        .output()
        .expect("bidorch runs");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.contains("without a token") && err.contains("console.token_env"),
        "{err}"
    );

    let token = "ana=console-token-7f3e91c2";
    let console = ConsoleProcess::start(
        &scenario,
        &[
            ("BIDORCH__CONSOLE__TOKEN_ENV", "CONSOLE_TOKENS".to_owned()),
            ("CONSOLE_TOKENS", token.to_owned()),
        ],
    )
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let anonymous = client.get(&console.url).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 303, "to the sign-in page");
    let wrong = client
        .get(&console.url)
        .bearer_auth("console-token-00000000")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    // A script with the token pauses as its name, no CSRF token needed (no browser sends a
    // bearer header by itself).
    let paused = client
        .post(format!("{}/pause", console.url))
        .bearer_auth("console-token-7f3e91c2")
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body("scope=upwork&reason=scripted&for=1m")
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status().as_u16(), 303);
    let state = scenario.ledger.controls.pause_state().await.unwrap();
    assert_eq!(state.pauses.len(), 1);
    assert_eq!(state.pauses[0].by, "ana");
    let page = client
        .get(&console.url)
        .bearer_auth("console-token-7f3e91c2")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("console-token-7f3e91c2"),
        "the token is never shown"
    );
}
