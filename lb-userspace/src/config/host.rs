//! Checks of this host against a config, for `xdplb run` (and `xdplb
//! check` on the gateway itself): the interfaces exist, `dsr` backends share
//! a segment with one, `tunnel` backends are routed out of one.
use ipnet::IpNet;

use super::schema::{Config, Mode};
use super::ConfigError;

/// Checks that every configured interface exists on this host. Kept apart
/// from [`parse`] so `xdplb check` validates a config meant for another host.
///
/// Asks the kernel in this process's network namespace (`if_nametoindex`)
/// rather than `/sys/class/net`, which shows the namespace sysfs was
/// mounted for: under `nsenter --net` those differ.
///
/// Also refuses a config without pools: `check` accepts one (the packaged
/// config ships its pools commented out), `run` has nothing to do with it.
pub fn check_interfaces_exist(cfg: &Config) -> Result<(), ConfigError> {
    if cfg.pools.is_empty() {
        return Err(ConfigError::NoPools);
    }
    for name in &cfg.dataplane.interfaces {
        let c = std::ffi::CString::new(name.as_bytes()).unwrap_or_default();
        // SAFETY: a valid NUL-terminated string; no other side effects.
        if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
            return Err(ConfigError::MissingInterface { name: name.clone() });
        }
    }
    check_dsr_attached(cfg)?;
    check_tunnel_routed(cfg)?;
    check_tunnel_source_local(cfg)
}

/// What `xdplb check` can verify of this host when it is the gateway (all
/// the configured interfaces exist here): that every `dsr` backend is on a
/// segment of one of them, and every `tunnel` backend routed out of one. Elsewhere it checks nothing, so a config can be
/// checked on another host.
pub fn check_host_if_gateway(cfg: &Config) -> Result<(), ConfigError> {
    match check_interfaces_exist(cfg) {
        // No pools: nothing to check here (`run` refuses it).
        Err(ConfigError::MissingInterface { .. } | ConfigError::NoPools) => Ok(()),
        other => other,
    }
}

/// Every `dsr` backend shares a subnet with one of the configured
/// interfaces (their IPv4 and IPv6 addresses and prefixes, read from the
/// kernel).
fn check_dsr_attached(cfg: &Config) -> Result<(), ConfigError> {
    if cfg.pools.iter().all(|p| p.mode != Mode::Dsr) {
        return Ok(());
    }
    let nets = interface_subnets(&cfg.dataplane.interfaces);
    for pool in cfg.pools.iter().filter(|p| p.mode == Mode::Dsr) {
        for b in &pool.backends {
            let a = b.addr.ip();
            if !nets.iter().any(|net| net.contains(&a)) {
                return Err(ConfigError::DsrNotAttached {
                    pool: pool.name.clone(),
                    backend: b.name.clone(),
                    addr: a,
                    ifaces: cfg.dataplane.interfaces.join(", "),
                });
            }
        }
    }
    Ok(())
}

/// Every `tunnel` backend is routed out of one of the configured interfaces:
/// the program redirects the outer packet there itself, and can hand it to
/// nothing else (see lb-ebpf's `direct`).
fn check_tunnel_routed(cfg: &Config) -> Result<(), ConfigError> {
    let ours: Vec<u32> = cfg
        .dataplane
        .interfaces
        .iter()
        .map(|name| {
            let c = std::ffi::CString::new(name.as_bytes()).unwrap_or_default();
            // SAFETY: a valid NUL-terminated string; no other side effects.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        })
        .collect();
    for pool in cfg.pools.iter().filter(|p| p.mode == Mode::Tunnel) {
        for b in &pool.backends {
            let a = b.addr.ip();
            let route = match crate::netlink::route_oif(a) {
                Ok(Some(oif)) if ours.contains(&oif) => continue,
                Ok(Some(oif)) => format!("is routed out of {}", if_name(oif)),
                Ok(None) => "has no route".to_string(),
                Err(e) => format!("has a route this host would not tell ({e})"),
            };
            return Err(ConfigError::TunnelNotRouted {
                pool: pool.name.clone(),
                backend: b.name.clone(),
                addr: a,
                route,
                ifaces: cfg.dataplane.interfaces.join(", "),
            });
        }
    }
    Ok(())
}

/// Every address of `tunnel_source` (each is some flow's outer source) is
/// this host's: routers send their fragmentation-needed about outer
/// packets there, and the backend's decap allows only those sources.
fn check_tunnel_source_local(cfg: &Config) -> Result<(), ConfigError> {
    let d = &cfg.dataplane;
    let nets = [
        d.tunnel_source_v4.map(IpNet::V4),
        d.tunnel_source_v6.map(IpNet::V6),
    ];
    for net in nets.into_iter().flatten() {
        for addr in prefix_addrs(net) {
            let why = match crate::netlink::is_local(addr) {
                Ok(true) => continue,
                Ok(false) => "the kernel routes it elsewhere".to_string(),
                Err(e) => format!("the kernel would not say: {e}"),
            };
            return Err(ConfigError::TunnelSourceNotLocal {
                prefix: net,
                addr,
                why,
            });
        }
    }
    Ok(())
}

/// Every address of `net`, its first and last included (validation keeps
/// `tunnel_source` prefixes to 256 addresses).
fn prefix_addrs(net: IpNet) -> impl Iterator<Item = std::net::IpAddr> {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len()).min(16);
    (0..1u128 << host_bits).map(move |i| match net {
        IpNet::V4(n) => std::net::IpAddr::V4((u32::from(n.network()) + i as u32).into()),
        IpNet::V6(n) => std::net::IpAddr::V6((u128::from(n.network()) + i).into()),
    })
}

/// An interface's name by index, or the index when it has none.
fn if_name(index: u32) -> String {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the IF_NAMESIZE bytes the call may write.
    let p = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
    if p.is_null() {
        return format!("interface {index}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The subnets of the IPv4 and IPv6 addresses on `ifaces` (if-addrs).
fn interface_subnets(ifaces: &[String]) -> Vec<IpNet> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| ifaces.contains(&i.name))
        .filter_map(|i| {
            let len = match &i.addr {
                if_addrs::IfAddr::V4(a) => a.prefixlen,
                if_addrs::IfAddr::V6(a) => a.prefixlen,
            };
            IpNet::new(i.ip(), len).ok()
        })
        .map(|n| n.trunc())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::super::{load, parse};
    use super::*;
    use std::path::Path;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("xdplb.toml"), text)
    }

    #[test]
    fn loopbacks_subnets_of_both_families() {
        let nets = interface_subnets(&["lo".to_string()]);
        let on = |a: &str| {
            nets.iter()
                .any(|n| n.contains(&a.parse::<IpAddr>().unwrap()))
        };
        assert!(on("127.0.0.53") && on("::1"), "{nets:?}");
        assert!(!on("198.18.1.11") && !on("2001:2:0:1::11"), "{nets:?}");
    }

    /// The host check reads the interface's IPv6 addresses from the
    /// kernel: loopback holds ::1/128 in any network namespace.
    #[test]
    fn dsr_backends_must_share_an_ipv6_subnet_with_an_interface() {
        let cfg = |backend: &str| {
            format!(
                "[dataplane]\ninterfaces = [\"lo\"]\n[[pool]]\nname = \"web\"\nvip = \"[2001:2:0:2::10]:80\"\nmode = \"dsr\"\n[[pool.backend]]\nname = \"web-1\"\naddr = \"{backend}\"\n"
            )
        };
        let on_lo = p(&cfg("[::1]:80")).unwrap();
        check_interfaces_exist(&on_lo).unwrap();
        let routed = p(&cfg("[2001:2:0:1::11]:80")).unwrap();
        let err = check_interfaces_exist(&routed).unwrap_err().to_string();
        assert!(
            err.contains("backend \"web-1\" (2001:2:0:1::11) is on no segment of lo"),
            "{err}"
        );
    }

    /// A host check's error names the file, line and column of what it is
    /// about, as a parse error does: the backend's `addr` for a dsr backend
    /// on no segment, the interface's name for one missing here.
    #[test]
    fn host_check_errors_name_file_line_and_column() {
        let dir = std::env::temp_dir().join(format!("xdplb-placed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("xdplb.toml");
        let text = "[dataplane]\ninterfaces = [\"lo\"]\n\n[[pool]]\nname = \"web\"\nvip = \"[2001:2:0:2::10]:80\"\nmode = \"dsr\"\n\n  [[pool.backend]]\n  name = \"web-1\"\n  addr = \"[::1]:80\"\n\n  [[pool.backend]]\n  name = \"web-2\"\n  addr = \"[2001:2:0:1::12]:80\"\n";
        // `text` written to `path`, loaded, refused by `check`, placed.
        let refused = |text: &str, check: fn(&Config) -> Result<(), ConfigError>| {
            std::fs::write(&path, text).unwrap();
            let cfg = load(&path).unwrap();
            check(&cfg).unwrap_err().placed(&path).to_string()
        };
        let err = refused(text, check_host_if_gateway);
        let want = format!(
            "{}:15:10: pool \"web\" is dsr but backend \"web-2\"",
            path.display()
        );
        assert!(err.starts_with(&want), "{err}");

        let missing = text.replace("[\"lo\"]", "[\"lo\", \"xdplb-none0\"]");
        let err = refused(&missing, check_interfaces_exist);
        let want = format!(
            "{}:2:21: dataplane.interfaces: no network interface \"xdplb-none0\"",
            path.display()
        );
        assert!(err.starts_with(&want), "{err}");
        // Other errors, and a file that no longer names the thing, stay as
        // they were.
        std::fs::write(&path, text).unwrap();
        let err = ConfigError::MissingInterface {
            name: "xdplb-none0".into(),
        };
        assert_eq!(
            err.placed(&path).to_string(),
            "dataplane.interfaces: no network interface \"xdplb-none0\" on this host"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tunnel_backends_must_be_routed_out_of_an_interface() {
        // Read-only route lookups in the test's own namespace: loopback
        // addresses leave through lo; 198.18.1.11 and 2001:2:0:1::11 are
        // routed elsewhere or not at all (nothing is configured for them).
        let cfg = |backend: &str, source: &str, vip: &str| {
            p(&format!(
                "[dataplane]\ninterfaces = [\"lo\"]\ntunnel_source = [\"{source}\"]\n[[pool]]\nname = \"web\"\nvip = \"{vip}\"\nmode = \"tunnel\"\n[[pool.backend]]\nname = \"web-1\"\naddr = \"{backend}\"\n"
            ))
            .unwrap()
        };
        const VIP4: &str = "198.18.2.10:80";
        const VIP6: &str = "[2001:2:0:2::10]:80";
        check_interfaces_exist(&cfg("127.0.0.1:80", "127.0.0.1", VIP4)).unwrap();
        check_interfaces_exist(&cfg("[::1]:80", "::1", VIP6)).unwrap();
        for (backend, source, vip, shown) in [
            ("198.18.1.11:80", "198.18.1.1", VIP4, "198.18.1.11"),
            (
                "[2001:2:0:1::11]:80",
                "2001:2:0:1::1",
                VIP6,
                "2001:2:0:1::11",
            ),
        ] {
            let err = check_interfaces_exist(&cfg(backend, source, vip))
                .unwrap_err()
                .to_string();
            let why = format!("is tunnel but backend \"web-1\" ({shown}) ");
            assert!(err.contains(&why), "{err}");
            assert!(
                err.contains("has no route") || err.contains("is routed out of "),
                "{err}"
            );
            assert!(err.contains("out of one of lo"), "{err}");
        }
    }

    #[test]
    fn every_tunnel_source_address_must_be_this_hosts() {
        // Read-only route lookups in the test's own namespace: 127.0.0.0/8
        // is local (lo's), 198.18.3.0/27 is nothing of this host's.
        let cfg = |source: &str| {
            p(&format!(
                "[dataplane]\ninterfaces = [\"lo\"]\ntunnel_source = [\"{source}\"]\n[[pool]]\nname = \"web\"\nvip = \"198.18.2.10:80\"\nmode = \"tunnel\"\n[[pool.backend]]\nname = \"web-1\"\naddr = \"127.0.0.1:80\"\n"
            ))
            .unwrap()
        };
        check_interfaces_exist(&cfg("127.0.0.0/24")).unwrap();
        let err = check_interfaces_exist(&cfg("198.18.3.0/27"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "tunnel_source 198.18.3.0/27: 198.18.3.0 is not an address of this host"
            ),
            "{err}"
        );
        assert!(
            err.contains("ip route add local 198.18.3.0/27 dev lo"),
            "{err}"
        );
    }
}
