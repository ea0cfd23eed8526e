//! Replies do not depend on the flow table: a live connection through the
//! VIP to a server that speaks first keeps working in both directions after
//! its flow entry is deleted from the pinned `FLOWS` table (what eviction
//! of an idle flow, or a second gateway that never saw the SYN, does).

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use lb_common::{FlowKey, IPPROTO_TCP};
use xdplb::dataplane::FlowTable;
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    skip_unless_root, Lab,
};

/// Where the speak-first server listens on the backend (lab-backend keeps
/// 8080).
const PORT: u16 = 9000;
/// How long a line may take to arrive.
const LINE_TIMEOUT: Duration = Duration::from_secs(3);
/// The speak-first server's accept loop ends after this, or when the test
/// ends, whichever is first.
const SERVER_LIFETIME: Duration = Duration::from_secs(60);
/// How often the non-blocking accept loop looks for a connection.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

/// Stops the accept loop when the test ends, however it ends.
struct Server(Arc<AtomicBool>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn flow_key(client: SocketAddrV4, vip: SocketAddrV4) -> FlowKey {
    FlowKey {
        src_addr: u32::from_ne_bytes(client.ip().octets()),
        dst_addr: u32::from_ne_bytes(vip.ip().octets()),
        src_port: client.port().to_be(),
        dst_port: vip.port().to_be(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    }
}

fn read_line(r: &mut BufReader<TcpStream>) -> Result<String> {
    let mut line = String::new();
    let n = r.read_line(&mut line).context("read a line")?;
    ensure!(n > 0, "connection closed");
    Ok(line.trim_end().to_string())
}

#[test]
fn replies_without_a_flow_entry_still_reach_the_client_both_ways() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut pool = PoolSpec::new(1, 0);
    pool.vip = SocketAddrV4::new(Lab::vip(0), PORT);
    pool.backend_port = PORT;
    pool.tcp_health = true;
    let vip = pool.vip;
    let mut d = Deployment::new(vec![pool])?;

    // The speak-first server: a listener bound inside b1, accepting on a
    // thread. Health probes (from the gateway) are closed at once; the
    // client's connection is handed to the test.
    let listener = d
        .lab
        .run_in("b1", || TcpListener::bind(("0.0.0.0", PORT)))??;
    let (conn_tx, conn_rx) = mpsc::channel::<TcpStream>();
    let client_ip = Lab::client_addr(0);
    listener.set_nonblocking(true)?;
    let server = Server(Arc::new(AtomicBool::new(false)));
    let stop = Arc::clone(&server.0);
    std::thread::spawn(move || {
        let until = Instant::now() + SERVER_LIFETIME;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, SocketAddr::V4(peer))) if *peer.ip() == client_ip => {
                    if s.set_nonblocking(false).is_err() || conn_tx.send(s).is_err() {
                        return;
                    }
                }
                // A health probe, or nothing yet.
                Ok(_) => {}
                Err(_) => std::thread::sleep(ACCEPT_POLL),
            }
        }
    });
    d.start_daemon()?;
    d.wait_state("web-1", "state", "active", Duration::from_secs(5))?;

    let client = d.lab.run_in("client", || {
        TcpStream::connect_timeout(&vip.into(), LINE_TIMEOUT)
    })??;
    client.set_read_timeout(Some(LINE_TIMEOUT))?;
    let local = match client.local_addr()? {
        SocketAddr::V4(a) => a,
        a => bail!("unexpected local address {a}"),
    };
    let accepted = conn_rx
        .recv_timeout(LINE_TIMEOUT)
        .context("the server never saw the client's connection")?;
    accepted.set_read_timeout(Some(LINE_TIMEOUT))?;
    let mut from_server = BufReader::new(client.try_clone()?);
    let mut from_client = BufReader::new(accepted.try_clone()?);
    let mut to_client = accepted;
    let mut to_server = client;

    // The server speaks first, with the flow entry in place.
    to_client.write_all(b"hello\n")?;
    ensure!(read_line(&mut from_server)? == "hello");

    // Delete the connection's flow entry, as an eviction would.
    let key = flow_key(local, vip);
    let flows = FlowTable::open(&d.lab.pin_path()).context("open the pinned FLOWS")?;
    let entry = flows
        .get(&key)
        .with_context(|| format!("no flow entry for {local} → {vip}"))?;
    println!("deleting flow {local} → {vip}: {entry:?}");
    ensure!(flows.remove(flows.tag(&key)), "flow entry already gone");
    ensure!(flows.get(&key).is_none(), "flow entry still there");
    let before = d.stats()?;

    // Server first again: its reply has no flow entry to lean on.
    to_client.write_all(b"after the flow entry is gone\n")?;
    let got = read_line(&mut from_server).with_context(|| {
        format!(
            "the client never got the server's line (reply not rewritten to the VIP?); \
             stats: {}",
            d.stats().map(|s| s.to_string()).unwrap_or_default()
        )
    })?;
    ensure!(got == "after the flow entry is gone", "{got:?}");

    // And the client → server direction, then the answer.
    to_server.write_all(b"ping\n")?;
    ensure!(read_line(&mut from_client)? == "ping");
    to_client.write_all(b"pong\n")?;
    ensure!(read_line(&mut from_server)? == "pong");

    // A few more rounds each way, so retransmissions cannot stand in for
    // delivery.
    for i in 0..5 {
        to_client.write_all(format!("s{i}\n").as_bytes())?;
        ensure!(read_line(&mut from_server)? == format!("s{i}"));
        to_server.write_all(format!("c{i}\n").as_bytes())?;
        ensure!(read_line(&mut from_client)? == format!("c{i}"));
    }

    let after = d.stats()?;
    let replies = |s: &serde_json::Value| s["backends"][0]["reply_packets"].as_u64().unwrap_or(0);
    ensure!(
        replies(&after) > replies(&before),
        "replies were not rewritten by XDP: before {before}, after {after}"
    );
    drop(server);
    Ok(())
}
