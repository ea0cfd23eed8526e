//! `lab-udp-backend --listen [::]:5300 --name dns-1`: the UDP server every
//! backend of a UDP pool runs.
//!
//! Every datagram, whatever it holds, is answered with one datagram
//! `<name>\n` to its sender, from the socket it arrived on, padded with
//! newlines to the length of the datagram asked if that is longer (so a
//! large question gets an answer as large: fragments both ways). So a
//! client learns which backend a flow reached, and a `kind = "udp"` health
//! probe (any payload, any reply) sees the server alive. Listen on `[::]:PORT`
//! to serve both families (a dual-stack socket), on `0.0.0.0:PORT` for
//! IPv4 only. Runs until killed.

use std::net::{SocketAddr, UdpSocket};

use clap::Parser;

/// Largest datagram read (anything longer is truncated, and still
/// answered).
const MAX_DATAGRAM: usize = 64 * 1024;

/// UDP backend for xdplb's namespace lab.
#[derive(Parser)]
struct Args {
    /// Address to listen on (`[::]:PORT` serves IPv4 and IPv6).
    #[arg(long)]
    listen: SocketAddr,
    /// Name answered to every datagram (`<name>\n`).
    #[arg(long)]
    name: String,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = serve(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn serve(args: &Args) -> std::io::Result<()> {
    let sock = UdpSocket::bind(args.listen)?;
    eprintln!(
        "lab-udp-backend {} listening on {}",
        args.name,
        sock.local_addr()?
    );
    let name = format!("{}\n", args.name);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut answer = Vec::with_capacity(MAX_DATAGRAM);
    loop {
        match sock.recv_from(&mut buf) {
            Ok((len, from)) => {
                answer.clear();
                answer.extend_from_slice(name.as_bytes());
                answer.resize(len.max(name.len()), b'\n');
                if let Err(e) = sock.send_to(&answer, from) {
                    // No route back, or a full queue: the client retries.
                    eprintln!("send to {from}: {e}");
                }
            }
            // An ICMP error from an earlier answer's destination is
            // reported on the socket: not the server's failure.
            Err(e) => {
                eprintln!("recv: {e}");
                // Never spin on an error that repeats.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}
