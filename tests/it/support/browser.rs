//! A real browser for the console's tests: Debian's headless Chromium driven over WebDriver by
//! its chromedriver, which runs on a free loopback port for one test and is killed when the
//! [`Browser`] drops. Missing either program is a visible skip (a failure with
//! `BIDORCH_REQUIRE_SERVICES`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

/// A headless Chromium session.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

fn found(program: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `None` (after the skip rule) without them.
    pub async fn start() -> Option<Self> {
        let (Some(driver), Some(chromium)) = (found("chromedriver"), found("chromium")) else {
            super::skip(
                "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)",
            );
            return None;
        };
        let port = super::free_port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        super::eventually(Duration::from_secs(20), "chromedriver answers", || async {
            super::http_get(format!("{url}/status")).await.is_ok()
        })
        .await;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": chromium,
                // As root, Chromium needs --no-sandbox.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1366,1000"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a Chromium session");
        Some(Self { client, driver })
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("the page opens");
    }

    /// The page's text content. A page may be navigating (a form just sent, the status page
    /// refreshing itself): what cannot be read yet is read again.
    pub async fn text(&self) -> String {
        let mut last = None;
        for _ in 0..50 {
            match self.client.find(Locator::Css("body")).await {
                Ok(body) => match body.text().await {
                    Ok(text) => return text,
                    Err(e) => last = Some(e.to_string()),
                },
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page has no readable body: {last:?}");
    }

    /// Waits until the page says `expected` (after a form was sent: the next page has loaded),
    /// and returns its text.
    pub async fn until_text(&self, expected: &str) -> String {
        let mut text = String::new();
        for _ in 0..100 {
            text = self.text().await;
            if text.contains(expected) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page never said {expected:?}; it says: {text}");
    }

    /// Types `text` into the field `css` names.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("field {css}: {e}"));
        field.send_keys(text).await.expect("typed");
    }

    /// Clicks what `css` names.
    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("element {css}: {e}"))
            .click()
            .await
            .expect("clicked");
    }

    /// The page as a PNG.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("a screenshot")
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
