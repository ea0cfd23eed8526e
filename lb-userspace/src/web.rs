//! What `control.metrics_listen` serves, over hyper's HTTP/1.1 server:
//!
//! | path | what |
//! |---|---|
//! | `GET /metrics` | the Prometheus exposition ([`Metrics::render`]) |
//! | `GET /status.json` | the controller's [`Status`](crate::status::Status), the document `xdplb status --json` prints |
//! | `GET /` | the status page: one self-contained HTML file (`web/status.html`, no external assets) that refreshes itself from `/status.json` and `/metrics` |
//!
//! Read-only, and it exposes nothing `xdplb status` does not. The limits of
//! a small daemon endpoint stay: at most [`MAX_CONNECTIONS`] connections
//! (more are closed on accept), request heads of at most
//! [`MAX_REQUEST_HEAD`] bytes (431 beyond), heads read within
//! [`REQUEST_TIMEOUT`], one request per connection, and a whole exchange
//! cut off after [`REQUEST_TIMEOUT`] + [`WRITE_TIMEOUT`] (a client that
//! stops reading).
use std::{convert::Infallible, future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header, Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use thiserror::Error;
use tokio::{net::TcpListener, task::JoinSet};

use crate::metrics::Metrics;

/// Largest request head accepted. A Prometheus scrape sends ~300 bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client must send its whole request head within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent scrape connections; Prometheus uses one per target.
pub const MAX_CONNECTIONS: usize = 16;

#[derive(Debug, Error)]
pub enum WebError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Writing a response gives up after this (a client that stopped reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The status page, compiled in.
const STATUS_PAGE: &str = include_str!("web/status.html");

/// Binds `listen` (`control.metrics_listen`). `xdplb run` does it before
/// it touches anything: an address it cannot have fails the start.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, WebError> {
    TcpListener::bind(listen)
        .await
        .map_err(|source| WebError::Bind {
            addr: listen,
            source,
        })
}

/// Serves `/metrics`, `/status.json` and the status page `/` on a
/// listener from [`bind`] (tests bind port 0) until `shutdown` completes.
pub async fn serve_listener(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics on http://{addr}/metrics, status page on http://{addr}/");
    }
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                if conns.len() >= MAX_CONNECTIONS {
                    tracing::debug!(%peer, "metrics: too many connections, closing");
                    continue;
                }
                let metrics = Arc::clone(&metrics);
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let metrics = Arc::clone(&metrics);
                        async move { Ok::<_, Infallible>(answer(req, metrics).await) }
                    });
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(TokioTimer::new())
                        .header_read_timeout(REQUEST_TIMEOUT)
                        .max_header_size(MAX_REQUEST_HEAD)
                        .keep_alive(false);
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    match tokio::time::timeout(REQUEST_TIMEOUT + WRITE_TIMEOUT, conn).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics request failed"),
                        Err(_) => tracing::debug!(%peer, "metrics client too slow; closed"),
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    StatusJson,
    Page,
    NotFound,
    MethodNotAllowed,
}

fn route(method: &Method, path: &str) -> Route {
    let known = match path {
        "/metrics" => Route::Metrics,
        "/status.json" => Route::StatusJson,
        "/" | "/index.html" => Route::Page,
        _ => return Route::NotFound,
    };
    if method == Method::GET || method == Method::HEAD {
        known
    } else {
        Route::MethodNotAllowed
    }
}

fn response(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = ctype.parse() {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    r
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

async fn answer(req: Request<Incoming>, metrics: Arc<Metrics>) -> Response<Full<Bytes>> {
    match route(req.method(), req.uri().path()) {
        Route::Metrics => {
            // Reading the maps is a few hundred syscalls: keep them off the
            // async workers.
            match tokio::task::spawn_blocking(move || metrics.render()).await {
                Ok(body) => response(StatusCode::OK, prometheus_text::CONTENT_TYPE, body),
                Err(_) => response(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "render failed\n"),
            }
        }
        Route::StatusJson => match metrics.status() {
            Some(s) => match serde_json::to_string(&s) {
                Ok(body) => response(StatusCode::OK, JSON, body),
                Err(_) => response(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "encode failed\n"),
            },
            None => response(
                StatusCode::SERVICE_UNAVAILABLE,
                JSON,
                r#"{"error":"no status yet: backends are being probed"}"#,
            ),
        },
        Route::Page => {
            let mut r = response(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE);
            // Everything is inline; nothing may be fetched from elsewhere.
            r.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static(
                    "default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; \
                     script-src 'unsafe-inline'; img-src data:",
                ),
            );
            r
        }
        Route::NotFound => response(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: /metrics, /status.json and / are served\n",
        ),
        Route::MethodNotAllowed => {
            let mut r = response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET\n");
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Status;
    use std::net::SocketAddr;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    #[test]
    fn routes() {
        assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::HEAD, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::GET, "/status.json"), Route::StatusJson);
        assert_eq!(route(&Method::GET, "/"), Route::Page);
        assert_eq!(route(&Method::GET, "/nope"), Route::NotFound);
        assert_eq!(route(&Method::POST, "/metrics"), Route::MethodNotAllowed);
    }

    #[test]
    fn the_page_fetches_nothing_from_elsewhere() {
        let page = STATUS_PAGE.to_ascii_lowercase();
        for bad in ["http://", "https://", "//cdn", "src=\"", "<link", "@import"] {
            assert!(!page.contains(bad), "status page has {bad:?}");
        }
        assert!(page.contains("/status.json"));
    }

    fn status() -> Status {
        let mut s = Status::sample();
        s.pools[0].announced = Some(true);
        s.pools[0].backends[0].rtt_ms = Some(0.25);
        s
    }

    async fn http(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_metrics_status_and_page_within_limits() {
        let m = Metrics::with_counter_source(|| Err(crate::dataplane::DataplaneError::NoObject));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_listener(listener, Arc::clone(&m), async move {
            let _ = rx.await;
        }));

        // Before the first sync there is no status document.
        let r = http(addr, b"GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        m.set_status(&status());

        let r = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(
            lower.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(lower.contains("connection: close"), "{head}");
        assert!(body.contains("xdplb_backend_up{pool=\"web\",backend=\"web-1\"} 1"));

        let r = http(addr, b"GET /status.json HTTP/1.0\r\n\r\n").await;
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        let got: Status = serde_json::from_str(body).unwrap();
        assert_eq!(got, status());

        let r = http(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r
            .to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'"));
        assert!(r.contains("<!doctype html>"));

        let r = http(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        let r = http(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = http(addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        let r = http(addr, b"garbage\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
        let r = http(addr, big.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");

        // A client that sends half a request does not hold up others.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /met").await.unwrap();
        let r = http(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(r.contains(" 200 OK"), "{r}");
        drop(slow);

        stop.send(()).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed() {
        let m = Metrics::with_counter_source(|| Err(crate::dataplane::DataplaneError::NoObject));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_listener(listener, m, async move {
            let _ = rx.await;
        }));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /").await.unwrap();
            idle.push(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let _ = extra.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await;
        let mut out = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut out))
            .await
            .expect("closed at once");
        assert!(n.is_err() || out.is_empty(), "served beyond the cap");
        drop(idle);
        stop.send(()).unwrap();
        server.await.unwrap();
    }
}
