//! Fragmented datagrams through a NAT VIP, both ways and both families: a
//! client asks a UDP pool with 3,000-byte datagrams (fragments at MTU
//! 1,500) and the backends answer with 3,000 bytes. Before, the first
//! fragment to the VIP was dropped and the answers' fragments left from
//! the backend's own address; now every fragment follows its first
//! (`FRAGS`): to the flow's backend, and back from the VIP.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec},
    skip_unless_root,
};

/// Bytes asked and answered: more than twice a 1,500-byte MTU.
const BIG: usize = 3000;
/// Flows (source ports) asked, each once.
const FLOWS: usize = 20;
const WAIT: Duration = Duration::from_secs(2);

/// `FLOWS` fresh sockets each send `BIG` bytes to the VIP and read one
/// answer: (answers from the VIP's own address and port, `BIG` bytes long,
/// starting with a backend's name; what else came).
fn ask_big(d: &Deployment) -> Result<(usize, Vec<String>)> {
    let vip = d.pools[0].vip_addr();
    let names: Vec<String> = d.pools[0].backends.iter().map(|b| b.name.clone()).collect();
    d.lab
        .run_in("client", move || -> Result<(usize, Vec<String>)> {
            let mut good = 0;
            let mut other = Vec::new();
            for i in 0..FLOWS {
                let local: SocketAddr = if vip.is_ipv6() {
                    "[::]:0".parse()?
                } else {
                    "0.0.0.0:0".parse()?
                };
                let s = UdpSocket::bind(local)?;
                s.set_read_timeout(Some(WAIT))?;
                let question = vec![b'?'; BIG];
                s.send_to(&question, vip).context("send")?;
                let mut buf = vec![0u8; 2 * BIG];
                match s.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        let name = text.trim();
                        if from == vip && n == BIG && names.iter().any(|b| b == name) {
                            good += 1;
                        } else {
                            other.push(format!("flow {i}: {n} bytes from {from}: {name:.20}"));
                        }
                    }
                    Err(e) => other.push(format!("flow {i}: {e}")),
                }
            }
            Ok((good, other))
        })?
}

fn big_datagrams_both_ways(pool: PoolSpec) -> Result<()> {
    let mut d = Deployment::new(vec![pool])?;
    d.start_daemon()?;
    let (good, other) = ask_big(&d)?;
    let stats = d.stats()?;
    println!(
        "{good} of {FLOWS} answered whole from the VIP; followed {} fragments",
        stats["global"]["events"]["fragment_followed"]
    );
    ensure!(
        good == FLOWS,
        "{good} of {FLOWS} flows answered whole from the VIP; the rest: {other:?}; stats {stats}"
    );
    ensure!(
        stats["global"]["drop_reasons"]["fragment"] == 0,
        "no fragment without its first: {stats}"
    );
    Ok(())
}

#[test]
fn ipv4_udp_datagrams_of_3000_bytes_through_the_vip_both_ways() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    big_datagrams_both_ways(PoolSpec::udp(2))
}

#[test]
fn ipv6_udp_datagrams_of_3000_bytes_through_the_vip_both_ways() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    big_datagrams_both_ways(PoolSpec::udp(2).in_ipv6())
}
