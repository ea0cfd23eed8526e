//! `lab-backend --listen 0.0.0.0:8080 --name web-1`: the HTTP/1.1 server
//! every lab backend runs.
//!
//! Every request gets `200` with body `<name>\n`, except `GET /healthz`,
//! which gets `200` with body `ok\n`, `GET /healthz/count`, which gets the
//! number of `/healthz` requests served so far (so a test can see whether
//! the balancer probes this backend), and `GET /bytes/N`, which gets `200`
//! with N bytes of [`xdplb_tests::http::pattern`] (N up to 64 MiB: bulk
//! transfers, e.g. through a small-MTU path). Keep-alive follows HTTP/1.1 (on unless
//! `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`), and
//! pipelined requests are answered in order. Runs until killed.

use clap::Parser;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use xdplb_tests::http::{pattern_byte, MAX_PATTERN_BODY};

/// Largest request head (request line + headers) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body read (and discarded).
const MAX_BODY: usize = 1 << 20;
/// Read buffer per connection.
const READ_CHUNK: usize = 4096;
/// `/bytes/N` bodies are written in pieces of this size.
const WRITE_CHUNK: usize = 64 * 1024;

/// HTTP/1.1 backend for xdplb's namespace lab.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Name answered in every response body (`<name>\n`).
    #[arg(long)]
    name: String,
    /// Tokio worker threads (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
}

fn main() {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(w) = args.workers {
        rt.worker_threads(w.max(1));
    }
    let result = rt
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(serve(args)).map_err(|e| e.to_string()));
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "lab-backend {} listening on {}",
        args.name,
        listener.local_addr()?
    );
    let name: Arc<str> = Arc::from(format!("{}\n", args.name));
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let name = Arc::clone(&name);
                tokio::spawn(async move {
                    let _ = sock.set_nodelay(true);
                    let _ = connection(sock, &name).await;
                });
            }
            // EMFILE and friends: back off briefly instead of spinning.
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// `/healthz` requests served.
static HEALTHZ_SERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One parsed request head.
struct Request {
    head_len: usize,
    body_len: usize,
    keep_alive: bool,
    is_head: bool,
    healthz: bool,
    /// `GET /healthz/count`.
    healthz_count: bool,
    /// `GET /bytes/N`: N bytes of the pattern (`Err` if N is too big or not
    /// a number).
    bytes: Option<Result<usize, ()>>,
}

async fn connection(mut sock: TcpStream, name: &str) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        // Read until a full head is buffered.
        let req = loop {
            match parse(&buf) {
                Ok(Some(req)) => break req,
                Ok(None) if buf.len() > MAX_HEAD => {
                    return reply_error(&mut sock, "431 Request Header Fields Too Large").await
                }
                Ok(None) => {}
                Err(()) => return reply_error(&mut sock, "400 Bad Request").await,
            }
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if req.body_len > MAX_BODY {
            return reply_error(&mut sock, "413 Content Too Large").await;
        }
        // Discard the body.
        let end = req.head_len + req.body_len;
        while buf.len() < end {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..end);

        if let Some(n) = req.bytes {
            let Ok(n) = n else {
                return reply_error(&mut sock, "400 Bad Request").await;
            };
            let conn = if req.keep_alive {
                "keep-alive"
            } else {
                "close"
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: {conn}\r\n\r\n"
            );
            sock.write_all(head.as_bytes()).await?;
            if !req.is_head {
                let mut sent = 0;
                while sent < n {
                    let piece: Vec<u8> = (sent..n.min(sent + WRITE_CHUNK))
                        .map(pattern_byte)
                        .collect();
                    sock.write_all(&piece).await?;
                    sent += piece.len();
                }
            }
            if !req.keep_alive {
                return sock.shutdown().await;
            }
            continue;
        }
        let count;
        let body = if req.healthz {
            HEALTHZ_SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            "ok\n"
        } else if req.healthz_count {
            count = format!(
                "{}\n",
                HEALTHZ_SERVED.load(std::sync::atomic::Ordering::Relaxed)
            );
            &count
        } else {
            name
        };
        let conn = if req.keep_alive {
            "keep-alive"
        } else {
            "close"
        };
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
            body.len()
        );
        if !req.is_head {
            resp.push_str(body);
        }
        sock.write_all(resp.as_bytes()).await?;
        if !req.keep_alive {
            return sock.shutdown().await;
        }
    }
}

async fn reply_error(sock: &mut TcpStream, status: &str) -> std::io::Result<()> {
    let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}

/// `Ok(None)`: head incomplete; `Err(())`: malformed.
fn parse(buf: &[u8]) -> Result<Option<Request>, ()> {
    let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..pos]).map_err(|_| ())?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().ok_or(())?.split(' ');
    let (method, target, version) = (
        first.next().ok_or(())?,
        first.next().ok_or(())?,
        first.next().ok_or(())?,
    );
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(()),
    };
    let mut keep_alive = http11;
    let mut body_len = 0;
    for line in lines {
        let (k, v) = line.split_once(':').ok_or(())?;
        let v = v.trim();
        if k.eq_ignore_ascii_case("connection") {
            let v = v.to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        } else if k.eq_ignore_ascii_case("content-length") {
            body_len = v.parse().map_err(|_| ())?;
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked request bodies are not needed by any test.
            return Err(());
        }
    }
    let path = target.split('?').next().unwrap_or(target);
    let bytes = path.strip_prefix("/bytes/").map(|n| {
        n.parse::<usize>()
            .ok()
            .filter(|n| *n <= MAX_PATTERN_BODY)
            .ok_or(())
    });
    Ok(Some(Request {
        head_len: pos + 4,
        body_len,
        keep_alive,
        is_head: method == "HEAD",
        healthz: path == "/healthz",
        healthz_count: path == "/healthz/count",
        bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let r = parse(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET")
            .unwrap()
            .unwrap();
        assert!(r.healthz && r.keep_alive && !r.is_head);
        assert_eq!(r.head_len, 34);
        let r = parse(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive && !r.healthz);
        let r = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive);
        let r = parse(b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.keep_alive);
        assert_eq!(r.body_len, 3);
        assert!(parse(b"GARBAGE\r\n\r\n").is_err());
        let r = parse(b"GET /bytes/1048576 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.bytes, Some(Ok(1 << 20)));
        let r = parse(b"GET /bytes/x HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.bytes, Some(Err(())));
        let r = parse(b"GET /bytes/999999999999 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.bytes, Some(Err(())));
        assert_eq!(
            parse(b"GET /bytes HTTP/1.1\r\n\r\n")
                .unwrap()
                .unwrap()
                .bytes,
            None
        );
    }
}
