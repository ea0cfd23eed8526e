//! The XDP program alone, attached to both gateway interfaces, forwarding
//! real TCP: client → VIP → the backend the ring names → back to the client
//! as the VIP. The ring is filled by the test (no controller). This is the
//! lab's one NIC emulation: TX checksum offload off on the senders.

use std::{
    net::{SocketAddr, SocketAddrV4},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use lb_common::{flow_hash, FlowKey, GlobalCounter, BACKEND_ACTIVE, IPPROTO_TCP};
use xdplb::dataplane::{
    backend_name_index, AttachMode, BackendSlot, CounterReader, Dataplane, Shape,
};
use xdplb_tests::{skip_unless_root, wait_until, KeepAliveClient, Lab};

const BACKEND_BIN: &str = env!("CARGO_BIN_EXE_lab-backend");
const RING: u32 = 1009;
const PORT: u16 = 8080;

fn ring_choice(ring: &[u32], client: SocketAddrV4, vip: SocketAddrV4) -> u32 {
    let key = FlowKey {
        src_addr: u32::from_ne_bytes(client.ip().octets()),
        dst_addr: u32::from_ne_bytes(vip.ip().octets()),
        src_port: client.port().to_be(),
        dst_port: vip.port().to_be(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    ring[(flow_hash(&key) % RING) as usize]
}

#[test]
fn real_tcp_reaches_the_backend_the_ring_names() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    // The one lab that emulates NICs (complete TCP checksums from the
    // senders, TX checksum offload off); every other test keeps the veths'
    // default offloads, so partial checksums are covered there.
    let lab = Lab::builder()
        .backends(3)
        .tx_checksum_offload(false)
        .build()?;
    let mut servers = Vec::new();
    for i in 0..3 {
        servers.push(lab.spawn(
            lab.backend_ns(i),
            &[
                BACKEND_BIN,
                "--listen",
                &format!("0.0.0.0:{PORT}"),
                "--name",
                &format!("web-{}", i + 1),
            ],
        )?);
    }
    let vip = SocketAddrV4::new(Lab::vip(0), 80);
    // A ring that is deliberately uneven (backend 0 twice as often), so a
    // wrong choice shows.
    let ring: Vec<u32> = (0..RING).map(|i| [0, 0, 1, 2][(i % 4) as usize]).collect();
    let pin_path = lab.pin_path();
    {
        let ring = ring.clone();
        let pin_path = pin_path.clone();
        lab.run_in(lab.gw_ns(), move || -> Result<()> {
            let mut dp = Dataplane::load(Shape {
                pin_path,
                ring_size: RING,
                flow_table_size: 4096,
            })?;
            for iface in Lab::gw_ifaces() {
                dp.attach(iface, AttachMode::Auto)?;
            }
            let ifaces: Vec<String> = Lab::gw_ifaces().iter().map(|s| s.to_string()).collect();
            dp.sync_host(&ifaces)?;
            dp.write_name(0, "web")?;
            for i in 0..3u32 {
                let addr = SocketAddrV4::new(Lab::backend_addr(i as usize), PORT);
                dp.write_backend(&BackendSlot {
                    slot: i,
                    vip_index: 0,
                    addr: addr.into(),
                    state: BACKEND_ACTIVE,
                    flags: 0,
                })?;
                dp.write_name(backend_name_index(i), &format!("web-{}", i + 1))?;
                dp.write_reply(addr, vip, i, 0)?;
            }
            dp.publish_vip(vip, 0, &ring, 0)?;
            // Dropping `dp` leaves the program attached: its links are pinned.
            Ok(())
        })??;
    }
    // Backends up, asked from the gateway: replies from a backend's service
    // port to anyone but this host are rewritten to the VIP (stateless
    // reverse NAT), so a client cannot reach it directly.
    for (i, server) in servers.iter().enumerate() {
        let addr = SocketAddr::from((Lab::backend_addr(i), PORT));
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            lab.run_in("gw", || xdplb_tests::http_get(addr, "/healthz"))
                .ok()
                .and_then(|r| r.ok())
                .is_some_and(|(s, _)| s == 200)
        });
        ensure!(up, "backend {addr} not answering: {}", server.log());
    }

    let (seen, mismatches) = lab.run_in("client", || -> Result<(Vec<u32>, Vec<String>)> {
        let mut seen = vec![0u32; 3];
        let mut mismatches = Vec::new();
        for _ in 0..40 {
            let mut c =
                KeepAliveClient::connect(SocketAddr::V4(vip)).context("connect to the VIP")?;
            let local = match c.local_addr()? {
                SocketAddr::V4(a) => a,
                other => anyhow::bail!("unexpected local address {other}"),
            };
            // Replies come from the VIP, or the client's stack would reset.
            ensure!(c.peer_addr() == SocketAddr::V4(vip));
            let want = ring_choice(&ring, local, vip);
            for _ in 0..3 {
                let (status, body) = c.get("/")?;
                ensure!(status == 200, "status {status}");
                let got = body.trim().to_string();
                if got != format!("web-{}", want + 1) {
                    mismatches.push(format!("{local}: ring says web-{}, got {got}", want + 1));
                }
            }
            seen[want as usize] += 1;
        }
        Ok((seen, mismatches))
    })??;
    ensure!(mismatches.is_empty(), "mismatches: {mismatches:?}");
    ensure!(
        seen.iter().all(|&n| n > 0),
        "every backend should get some of 40 flows: {seen:?}"
    );

    let c = CounterReader::open(&pin_path)?.read()?;
    ensure!(
        c.vips[0].counters.new_flows >= 40,
        "new flows: {:?}",
        c.vips[0]
    );
    ensure!(c.get(GlobalCounter::Redirected) > 0);
    let replies: u64 = c.backends.iter().map(|b| b.counters.reply_packets).sum();
    ensure!(replies > 0, "replies rewritten by XDP: {:?}", c.backends);
    Ok(())
}
