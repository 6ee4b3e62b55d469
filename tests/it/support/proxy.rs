//! A TCP proxy the test can cut: an outage made for real (connections reset, new ones
//! refused), in front of a real server, without touching the server itself.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:{port}` to `upstream` until cut.
pub struct TcpProxy {
    pub addr: SocketAddr,
    upstream: String,
    task: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Starts forwarding to `upstream` (`host:port`) on a free loopback port.
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("bound address");
        Self {
            addr,
            upstream: upstream.to_owned(),
            task: Some(tokio::spawn(forward(listener, upstream.to_owned()))),
        }
    }

    /// The proxy's `host:port` for an upstream URL of `url`'s scheme: `url` with its host and
    /// port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).expect("service URL parses");
        u.set_host(Some("127.0.0.1")).expect("host");
        u.set_port(Some(self.addr.port())).expect("port");
        u.to_string()
    }

    /// Closes every proxied connection and refuses new ones.
    pub async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Accepts and forwards again, on the same port.
    pub async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("the same port again");
        self.task = Some(tokio::spawn(forward(listener, self.upstream.clone())));
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn forward(listener: TcpListener, upstream: String) {
    // Owned here: aborting this task drops the set, which aborts (closes) every connection.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        let upstream = upstream.clone();
        connections.spawn(async move {
            if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}
