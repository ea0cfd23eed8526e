//! `lab-conns --vip 198.18.2.10:80 --from 198.18.0.100:20000 --count 12500`:
//! holds many keep-alive HTTP connections for a namespace test, in a
//! process of its own (one process may not hold more sockets than its
//! open-file limit, and tests cannot always raise it).
//!
//! Opens `count` connections to `vip` from `from`'s address, source ports
//! `from.port()` upwards (bound explicitly), sends `GET /` on each and
//! prints one line per connection, `conn <source> <body>`, then
//! `up <count>`. Then it waits for commands on stdin:
//!
//! - `check`: `GET /` on every connection; prints `lost <source> <what>`
//!   for each that does not answer with the body it answered first, then
//!   `checked <ok> <lost>`.
//! - `exit` (or end of input): closes everything and exits.
//!
//! A failure to open prints `error <what>` and exits non-zero.

use std::io::{BufRead, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::Duration;

use clap::Parser;
use xdplb_tests::{connect_from, get_on};

/// Connect, read and write timeout of every connection.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Most commands read (each is one line; a test sends two or three).
const MAX_COMMANDS: usize = 100;

#[derive(Parser)]
struct Args {
    /// Where to connect.
    #[arg(long)]
    vip: SocketAddrV4,
    /// Source address and first source port.
    #[arg(long)]
    from: SocketAddrV4,
    /// How many connections (source ports from.port() ..).
    #[arg(long)]
    count: u16,
}

fn main() {
    let args = Args::parse();
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut conns: Vec<(TcpStream, SocketAddrV4, String)> = Vec::with_capacity(args.count.into());
    for i in 0..args.count {
        let Some(port) = args.from.port().checked_add(i) else {
            let _ = writeln!(out, "error source port past 65535");
            std::process::exit(1);
        };
        let src = SocketAddrV4::new(*args.from.ip(), port);
        let opened = connect_from(src, args.vip, IO_TIMEOUT).and_then(|mut s| {
            let (status, body) = get_on(&mut s, "/")?;
            anyhow::ensure!(status == 200, "status {status}");
            Ok((s, body.trim().to_string()))
        });
        match opened {
            Ok((s, body)) => {
                let _ = writeln!(out, "conn {src} {body}");
                conns.push((s, src, body));
            }
            Err(e) => {
                let _ = writeln!(out, "error {src}: {e:#}");
                std::process::exit(1);
            }
        }
    }
    let _ = writeln!(out, "up {}", conns.len());
    let _ = out.flush();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines().take(MAX_COMMANDS) {
        match line.as_deref().map(str::trim) {
            Ok("check") => {
                let (mut ok, mut lost) = (0, 0);
                for (s, src, first) in conns.iter_mut() {
                    match get_on(s, "/") {
                        Ok((200, body)) if body.trim() == first => ok += 1,
                        Ok((status, body)) => {
                            lost += 1;
                            let _ = writeln!(
                                out,
                                "lost {src} status {status} {:?} (was {first})",
                                body.trim()
                            );
                        }
                        Err(e) => {
                            lost += 1;
                            let _ = writeln!(out, "lost {src} {e:#} (was {first})");
                        }
                    }
                }
                let _ = writeln!(out, "checked {ok} {lost}");
                let _ = out.flush();
            }
            Ok("exit") | Err(_) => break,
            Ok(other) => {
                let _ = writeln!(out, "error unknown command {other:?}");
                let _ = out.flush();
            }
        }
    }
}
