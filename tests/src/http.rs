//! A tiny blocking HTTP/1.1 client for tests: enough to talk to
//! `lab-backend` (and nginx/haproxy) through the load balancer.
//!
//! Sockets belong to the network namespace of the thread that creates them:
//! create clients inside [`Lab::run_in`](crate::Lab::run_in). A
//! [`KeepAliveClient`] made there can be returned and used from any thread.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// Connect, read and write timeout of the helpers here.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response body the client accepts (tests only read short bodies).
const MAX_BODY: usize = 1 << 20;
/// Longest status or header line accepted.
const MAX_LINE: u64 = 8 * 1024;
/// Most header lines accepted in one response.
const MAX_HEADERS: usize = 100;

/// `GET path` on a fresh connection (`Connection: close`).
/// Returns the status code and the body.
pub fn http_get(addr: impl Into<SocketAddr>, path: &str) -> Result<(u16, String)> {
    let addr = addr.into();
    let stream = connect(addr)?;
    let mut reader = BufReader::new(stream);
    send_get(reader.get_mut(), addr, path, false)?;
    let resp = read_response(&mut reader).with_context(|| format!("GET http://{addr}{path}"))?;
    let _ = reader.get_ref().shutdown(Shutdown::Both);
    Ok((resp.status, resp.body))
}

/// One connection kept open across requests, for drain and restart tests:
/// established flows must keep reaching the same backend.
pub struct KeepAliveClient {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    closed: bool,
}

impl KeepAliveClient {
    /// Opens the connection (no request is sent yet).
    pub fn connect(addr: impl Into<SocketAddr>) -> Result<Self> {
        let addr = addr.into();
        Ok(Self {
            addr,
            reader: BufReader::new(connect(addr)?),
            closed: false,
        })
    }

    /// `GET path` on the kept connection; returns status and body.
    /// Fails when the server closed the connection or does not answer in time.
    pub fn get(&mut self, path: &str) -> Result<(u16, String)> {
        if self.closed {
            bail!("connection to {} was closed by the server", self.addr);
        }
        send_get(self.reader.get_mut(), self.addr, path, true)?;
        let resp = read_response(&mut self.reader)
            .with_context(|| format!("GET http://{}{path} (keep-alive)", self.addr))?;
        self.closed = resp.close;
        Ok((resp.status, resp.body))
    }

    /// The client side of the connection (the flow's source address).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.reader.get_ref().local_addr()?)
    }

    /// The address connected to.
    pub fn peer_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the read/write timeout (default [`IO_TIMEOUT`]).
    pub fn set_timeout(&self, timeout: Duration) -> Result<()> {
        let s = self.reader.get_ref();
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(())
    }
}

/// Largest body `lab-backend` serves on `/bytes/N`.
pub const MAX_PATTERN_BODY: usize = 64 << 20;

/// Byte `i` of the body `lab-backend` answers `GET /bytes/N` with: a
/// sequence with period 251 (prime, so it lines up with no segment or
/// buffer size), so a lost, repeated or reordered stretch shows.
pub fn pattern_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// The whole body of `GET /bytes/{len}`.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(pattern_byte).collect()
}

/// `GET path` on a fresh connection with a body of up to `max_body` bytes,
/// kept as bytes; the whole exchange must end within `deadline` (each read
/// also gives up after [`IO_TIMEOUT`]). For large transfers
/// (`/bytes/N`), where [`http_get`]'s 1 MiB text body does not fit.
pub fn http_get_bytes(
    addr: impl Into<SocketAddr>,
    path: &str,
    max_body: usize,
    deadline: Duration,
) -> Result<(u16, Vec<u8>)> {
    let addr = addr.into();
    let started = std::time::Instant::now();
    let stream = connect(addr)?;
    let mut reader = BufReader::new(stream);
    send_get(reader.get_mut(), addr, path, false)?;
    let status_line = read_line(&mut reader)?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    for _ in 0..=MAX_HEADERS {
        let line = read_line(&mut reader)?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = Some(v.trim().parse::<usize>().context("bad Content-Length")?);
            }
        }
    }
    let len = length.context("no Content-Length")?;
    if len > max_body {
        bail!("body of {len} bytes is larger than {max_body}");
    }
    let mut body = vec![0u8; len];
    let mut got = 0;
    // Bounded: each round reads at least one byte or fails, and the whole
    // loop ends at `deadline`.
    while got < len {
        if started.elapsed() > deadline {
            bail!("GET http://{addr}{path}: {got} of {len} bytes after {deadline:?}");
        }
        let n = reader
            .read(&mut body[got..])
            .with_context(|| format!("GET http://{addr}{path}: read after {got} of {len} bytes"))?;
        if n == 0 {
            bail!("GET http://{addr}{path}: connection closed after {got} of {len} bytes");
        }
        got += n;
    }
    let _ = reader.get_ref().shutdown(Shutdown::Both);
    Ok((status, body))
}

/// A TCP connection from the given local address and port (`bind` before
/// `connect`), for tests that need more 4-tuples than one address's
/// ephemeral ports give. Connect, read and write time out after
/// `timeout`. Create it inside [`Lab::run_in`](crate::Lab::run_in).
pub fn connect_from(
    local: std::net::SocketAddrV4,
    remote: std::net::SocketAddrV4,
    timeout: Duration,
) -> Result<TcpStream> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let sockaddr = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on an fd owned from its creation, with
    // valid pointers and lengths.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket");
        }
        let fd = OwnedFd::from_raw_fd(fd);
        // SO_SNDTIMEO bounds connect(2) too.
        for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
            let rc = libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("setsockopt timeout");
            }
        }
        let l = sockaddr(local);
        if libc::bind(fd.as_raw_fd(), (&l as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("bind {local}"));
        }
        let r = sockaddr(remote);
        if libc::connect(fd.as_raw_fd(), (&r as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("connect {local} -> {remote}"));
        }
        let stream = TcpStream::from(fd);
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// `GET path` with keep-alive on an open connection, reading the whole
/// response without buffering beyond it; returns status and body. For
/// tests holding very many connections (no per-connection reader).
pub fn get_on(stream: &mut TcpStream, path: &str) -> Result<(u16, String)> {
    let addr = stream.peer_addr()?;
    send_get(stream, addr, path, true)?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    // Bounded: every round adds at least one byte, and MAX_LINE caps it.
    while buf.len() < MAX_LINE as usize {
        let n = stream.read(&mut chunk).context("read response")?;
        if n == 0 {
            bail!("connection closed before the response was complete");
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line in {head:?}"))?;
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .context("response without Content-Length")?;
        if buf.len() >= end + 4 + length {
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
            return Ok((status, body));
        }
    }
    bail!("response longer than {MAX_LINE} bytes")
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn send_get(stream: &mut TcpStream, addr: SocketAddr, path: &str, keep_alive: bool) -> Result<()> {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: {conn}\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .with_context(|| format!("send request to {addr}"))
}

struct Response {
    status: u16,
    body: String,
    /// The server will close the connection after this response.
    close: bool,
}

fn read_line(reader: &mut BufReader<TcpStream>) -> Result<String> {
    let mut line = String::new();
    let n = reader.by_ref().take(MAX_LINE).read_line(&mut line)?;
    if n == 0 {
        bail!("connection closed before the response was complete");
    }
    if !line.ends_with('\n') {
        bail!("response line longer than {MAX_LINE} bytes");
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn read_response(reader: &mut BufReader<TcpStream>) -> Result<Response> {
    let status_line = read_line(reader)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut close = version == "HTTP/1.0";
    let mut length = None;
    let mut chunked = false;
    let mut ended = false;
    for _ in 0..MAX_HEADERS {
        let line = read_line(reader)?;
        if line.is_empty() {
            ended = true;
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            bail!("bad header line {line:?}");
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(value.parse::<usize>().context("bad Content-Length")?);
            }
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    close = true;
                } else if v.contains("keep-alive") {
                    close = false;
                }
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    if !ended {
        bail!("more than {MAX_HEADERS} header lines");
    }
    let body = if chunked {
        read_chunked(reader)?
    } else if let Some(len) = length {
        if len > MAX_BODY {
            bail!("body of {len} bytes is larger than {MAX_BODY}");
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).context("read body")?;
        body
    } else {
        // No length: the body runs to the end of the connection.
        close = true;
        let mut body = Vec::new();
        reader
            .by_ref()
            .take(MAX_BODY as u64)
            .read_to_end(&mut body)
            .context("read body")?;
        body
    };
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        close,
    })
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    // Bounded: each round either ends or adds at least one byte, and the
    // body is capped at MAX_BODY.
    for _ in 0..=MAX_BODY {
        let line = read_line(reader)?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).context("bad chunk size")?;
        if size == 0 {
            // Trailers, then the empty line.
            for _ in 0..MAX_HEADERS {
                if read_line(reader)?.is_empty() {
                    return Ok(body);
                }
            }
            bail!("too many trailer lines");
        }
        if body.len() + size > MAX_BODY {
            bail!("chunked body larger than {MAX_BODY}");
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        read_line(reader)?;
    }
    bail!("chunked body too long")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_has_a_prime_period() {
        let p = pattern(600);
        assert_eq!(p[0], 0);
        assert_eq!(p[250], 250);
        assert_eq!(p[251], 0);
        assert_eq!(p[599], pattern_byte(599));
        assert_ne!(pattern(512)[256..], pattern(256)[..]);
    }
}
