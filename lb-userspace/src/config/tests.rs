use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use lb_common::limits::{DEFAULT_RING_SIZE, MAX_BACKENDS, MAX_VIPS};

use super::*;

const FULL: &str = include_str!("../../../config/xdplb.toml");
const MINIMAL: &str = include_str!("../../../config/minimal.toml");

fn p(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("xdplb.toml"), text)
}

/// Parses, expects an error, and checks it names `line` and contains
/// every fragment.
fn rejects(text: &str, line: usize, fragments: &[&str]) {
    let err = p(text).expect_err("config should be rejected").to_string();
    assert!(
        err.starts_with(&format!("xdplb.toml:{line}:")),
        "expected line {line}: {err}"
    );
    for f in fragments {
        assert!(err.contains(f), "expected {f:?} in: {err}");
    }
    assert!(!err.contains('\n'), "one line: {err}");
}

const HEAD: &str = "[dataplane]\ninterfaces = [\"eth0\"]\n";

fn pool_with(extra_pool: &str, backends: &str) -> String {
    format!("{HEAD}[[pool]]\nname = \"web\"\nvip = \"198.18.2.10:80\"\n{extra_pool}{backends}")
}

const ONE_BACKEND: &str = "[[pool.backend]]\nname = \"web-1\"\naddr = \"198.18.1.11:8080\"\n";

#[test]
fn full_example_parses_to_expected_values() {
    let c = p(FULL).unwrap();
    assert_eq!(c.dataplane.interfaces, vec!["eth0", "eth1"]);
    assert_eq!(c.dataplane.xdp_mode, XdpMode::Auto);
    assert_eq!(c.dataplane.pin_path, PathBuf::from("/sys/fs/bpf/xdplb"));
    assert_eq!(c.dataplane.flow_table_size, 1_048_576);
    assert_eq!(c.dataplane.ring_size, 65_537);
    assert_eq!(c.dataplane.answers_per_sec, 1000);
    assert_eq!(c.control.admin_socket, PathBuf::from("/run/xdplb.sock"));
    assert_eq!(
        c.control.state_file.as_deref(),
        Some(Path::new("/var/lib/xdplb/state.json"))
    );
    let off = p(&FULL.replace(
        "state_file = \"/var/lib/xdplb/state.json\"",
        "state_file = \"\"",
    ))
    .map(|c| c.control.state_file)
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(off, None);
    assert_eq!(
        c.control.metrics_listen,
        Some("127.0.0.1:9434".parse().unwrap())
    );
    assert_eq!(c.pools.len(), 1);
    let pool = &c.pools[0];
    assert_eq!(pool.name, "web");
    assert_eq!(pool.vip, "198.18.2.10:80".parse().unwrap());
    assert_eq!(pool.mode, Mode::Nat);
    assert_eq!(pool.protocol, Protocol::Tcp);
    assert_eq!(pool.min_active, 3);
    assert_eq!(
        pool.health,
        HealthConfig {
            kind: HealthKind::Tcp,
            interval_ms: 500,
            timeout_ms: 300,
            rise: 2,
            fall: 3,
            path: None,
            expect_status: None,
            port: None,
            payload: None,
        }
    );
    assert_eq!(pool.flow_idle_ms, 0);
    assert_eq!(pool.load, Some(LoadConfig::default()));
    assert_eq!(pool.backends.len(), 4);
    assert_eq!(pool.primaries().count(), 3);
    let spare = pool.backend("web-spare-1").unwrap();
    assert_eq!(spare.role, Role::Spare);
    assert_eq!(spare.weight, 100);
    assert_eq!(spare.addr, "198.18.1.21:8080".parse().unwrap());
    assert_eq!(pool.backend("web-2").unwrap().weight, 100);
}

#[test]
fn minimal_example_gets_defaults() {
    let c = p(MINIMAL).unwrap();
    assert_eq!(c.control, ControlConfig::default());
    assert_eq!(c.dataplane.ring_size, DEFAULT_RING_SIZE);
    let pool = &c.pools[0];
    assert_eq!(pool.min_active, 1);
    assert_eq!(pool.mode, Mode::Nat);
    assert_eq!(pool.health, HealthConfig::default());
    assert_eq!(pool.load, None);
    assert_eq!(
        (pool.on_down, pool.slow_start_ms, pool.ramp_ms()),
        (OnDown::Reset, None, 0)
    );
    assert!(pool.backends.iter().all(|b| b.role == Role::Primary));
}

#[test]
fn on_down_and_pool_slow_start_parse() {
    let c = p(&pool_with(
        "on_down = \"keep\"\nslow_start_ms = 3000\n",
        ONE_BACKEND,
    ))
    .unwrap();
    assert_eq!(c.pools[0].on_down, OnDown::Keep);
    assert_eq!(c.pools[0].ramp_ms(), 3000);
    let err = p(&pool_with("on_down = \"linger\"\n", ONE_BACKEND))
        .unwrap_err()
        .to_string();
    assert!(err.contains("linger") && err.contains("keep"), "{err}");
}

#[test]
fn load_reads_the_file_and_names_it_in_errors() {
    let dir = std::env::temp_dir().join(format!("xdplb-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[dataplane]\ninterfaces = [\"eth0\"]\nbogus = 1\n").unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}:3:1:", path.display())),
        "{err}"
    );
    let err = load(&dir.join("absent.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn http_defaults() {
    let c = p(&pool_with("[pool.health]\nkind = \"http\"\n", ONE_BACKEND)).unwrap();
    assert_eq!(c.pools[0].health.path.as_deref(), Some("/"));
    assert_eq!(c.pools[0].health.expect_status, Some(200));
}

#[test]
fn metrics_can_be_disabled() {
    let text = format!(
        "{HEAD}[control]\nmetrics_listen = \"\"\n[[pool]]\nname = \"web\"\nvip = \"198.18.2.10:80\"\n{ONE_BACKEND}"
    );
    assert_eq!(p(&text).unwrap().control.metrics_listen, None);
}

#[test]
fn no_pools_checks_but_does_not_run() {
    let cfg = p(HEAD).unwrap();
    assert!(cfg.pools.is_empty());
    assert!(matches!(
        check_interfaces_exist(&cfg),
        Err(ConfigError::NoPools)
    ));
    assert!(check_host_if_gateway(&cfg).is_ok());
}

#[test]
fn unknown_key_names_key_and_line() {
    rejects(
        &pool_with("colour = \"blue\"\n", ONE_BACKEND),
        6,
        &["unknown field", "colour"],
    );
    rejects(
        &pool_with(
            "",
            "[[pool.backend]]\nname = \"a\"\naddr = \"198.18.1.1:80\"\nwieght = 5\n",
        ),
        9,
        &["wieght"],
    );
}

#[test]
fn syntax_and_type_errors_carry_positions() {
    rejects("[dataplane\n", 1, &[]);
    rejects(
        &pool_with("min_active = \"two\"\n", ONE_BACKEND),
        6,
        &["invalid type"],
    );
    rejects(
        &pool_with(
            "",
            "[[pool.backend]]\nname = \"a\"\naddr = \"198.18.1.300:80\"\n",
        ),
        8,
        &["invalid"],
    );
    rejects(
        &pool_with("protocol = \"sctp\"\n", ONE_BACKEND),
        6,
        &["sctp"],
    );
    rejects(
        "[dataplane]\ninterfaces = [\"eth0\"]\nxdp_mode = \"turbo\"\n",
        3,
        &["turbo"],
    );
}

#[test]
fn duplicate_backend_names_point_at_both() {
    let text = pool_with(
        "",
        "[[pool.backend]]\nname = \"web-1\"\naddr = \"198.18.1.11:8080\"\n[[pool.backend]]\nname = \"web-1\"\naddr = \"198.18.1.12:8080\"\n",
    );
    let err = p(&text).unwrap_err().to_string();
    assert_eq!(
        err,
        "xdplb.toml:10:8: duplicate backend name \"web-1\" in pool \"web\" (first at line 7)"
    );
}

#[test]
fn backend_address_serves_one_pool_and_names_fit_the_map() {
    let text = r#"
[dataplane]
interfaces = ["eth0"]
[[pool]]
name = "a"
vip = "198.18.2.10:80"
  [[pool.backend]]
  name = "x"
  addr = "198.18.1.11:8080"
[[pool]]
name = "b"
vip = "198.18.2.11:80"
  [[pool.backend]]
  name = "y"
  addr = "198.18.1.11:8080"
"#;
    let e = parse(Path::new("x.toml"), text).unwrap_err().to_string();
    assert!(e.starts_with("x.toml:15:10: backend address 198.18.1.11:8080 is already used in pool \"a\" at line 9"), "{e}");
    let mut long = text.replace("name = \"y\"", &format!("name = \"{}\"", "y".repeat(64)));
    // Pool b's backend gets an address of its own.
    let at = long.rfind("198.18.1.11").unwrap();
    long.replace_range(at..at + 11, "198.18.1.12");
    let e = parse(Path::new("x.toml"), &long).unwrap_err().to_string();
    assert!(e.contains("backend name is longer than 63 bytes"), "{e}");
}

#[test]
fn duplicate_pools_and_vips() {
    let second = |name: &str, vip: &str| {
        format!("[[pool]]\nname = \"{name}\"\nvip = \"{vip}\"\n{ONE_BACKEND}")
    };
    let base = pool_with("", ONE_BACKEND);
    rejects(
        &format!("{base}{}", second("web", "198.18.2.11:80")),
        10,
        &["duplicate pool name \"web\"", "line 4"],
    );
    rejects(
        &format!("{base}{}", second("api", "198.18.2.10:80")),
        11,
        &["duplicate vip 198.18.2.10:80", "\"web\""],
    );
}

#[test]
fn direct_return_modes_need_the_vip_port_and_tunnels_a_source() {
    const PORT_80: &str = "[[pool.backend]]\nname = \"web-1\"\naddr = \"198.18.1.11:80\"\n";
    let c = p(&pool_with("mode = \"dsr\"\n", PORT_80)).unwrap();
    assert_eq!(c.pools[0].mode, Mode::Dsr);
    rejects(
        &pool_with("mode = \"dsr\"\n", ONE_BACKEND),
        4,
        &["is dsr but backend \"web-1\" listens on another port"],
    );
    rejects(
        &pool_with("mode = \"tunnel\"\n", PORT_80),
        6,
        &["is tunnel but [dataplane] has no IPv4 tunnel_source"],
    );
    let with_source = |src: &str| {
        pool_with("mode = \"tunnel\"\n", PORT_80)
            .replace(HEAD, &format!("{HEAD}tunnel_source = [{src}]\n"))
    };
    let c = p(&with_source("\"198.18.1.1\"")).unwrap();
    assert_eq!(c.pools[0].mode, Mode::Tunnel);
    assert_eq!(
        c.dataplane.tunnel_source_v4,
        Some("198.18.1.1/32".parse().unwrap())
    );
    rejects(
        &with_source("\"198.18.1.1\", \"198.18.1.2\""),
        3,
        &["tunnel_source takes one address (or prefix) per family"],
    );
    // A prefix: each flow's outer source is one of its addresses.
    let c = p(&with_source("\"198.18.3.0/27\"")).unwrap();
    assert_eq!(
        c.dataplane.tunnel_source_v4,
        Some("198.18.3.0/27".parse().unwrap())
    );
    rejects(
        &with_source("\"198.18.0.0/23\""),
        3,
        &[
            "tunnel_source 198.18.0.0/23 is too large",
            "at most 256 addresses (/24 for IPv4, /120 for IPv6)",
        ],
    );
    rejects(
        &with_source("\"198.18.3.5/27\""),
        3,
        &["tunnel_source 198.18.3.5/27 has host bits set: write the prefix as 198.18.3.0/27"],
    );
    rejects(
        &with_source("\"gateway\""),
        3,
        &["tunnel_source \"gateway\" is neither an address nor a prefix"],
    );
    rejects(
        &pool_with("mode = \"tunnel\"\n", ONE_BACKEND)
            .replace(HEAD, &format!("{HEAD}tunnel_source = [\"198.18.1.1\"]\n")),
        5,
        &["is tunnel but backend \"web-1\" listens on another port"],
    );
}

const V6_BACKEND: &str = "[[pool.backend]]\nname = \"web-1\"\naddr = \"[2001:2:0:1::11]:8080\"\n";

fn pool6_with(extra_pool: &str, backends: &str) -> String {
    format!("{HEAD}[[pool]]\nname = \"web\"\nvip = \"[2001:2:0:2::10]:80\"\n{extra_pool}{backends}")
}

#[test]
fn ipv6_pools_parse() {
    let c = p(&pool6_with("", V6_BACKEND)).unwrap();
    let pool = &c.pools[0];
    assert_eq!(pool.vip, "[2001:2:0:2::10]:80".parse().unwrap());
    assert_eq!(
        pool.backends[0].addr,
        "[2001:2:0:1::11]:8080".parse().unwrap()
    );
    assert_eq!(pool.endpoint().to_string(), "[2001:2:0:2::10]:80/tcp");
    assert_eq!(
        pool.backend_endpoint(&pool.backends[0]),
        Endpoint::tcp("[2001:2:0:1::11]:8080".parse::<SocketAddr>().unwrap())
    );
    rejects(
        &pool6_with("", V6_BACKEND).replace("[2001:2:0:1::11]:8080", "[2001:2:0:1::11]"),
        8,
        &["invalid socket address"],
    );
}

#[test]
fn a_pool_is_one_family() {
    rejects(
        &pool6_with("", ONE_BACKEND),
        8,
        &[
            "backend \"web-1\" is IPv4 (198.18.1.11:8080) but pool \"web\" is IPv6",
            "one address family",
        ],
    );
    rejects(
        &pool_with("", V6_BACKEND),
        8,
        &[
            "backend \"web-1\" is IPv6",
            "pool \"web\" is IPv4 (vip 198.18.2.10:80)",
        ],
    );
    // The second backend is the odd one out: its line is named.
    rejects(
        &pool_with(
            "",
            &format!("{ONE_BACKEND}[[pool.backend]]\nname = \"web-2\"\naddr = \"[2001:2:0:1::12]:8080\"\n"),
        ),
        11,
        &["backend \"web-2\" is IPv6"],
    );
    rejects(
        &pool6_with("", V6_BACKEND).replace("[2001:2:0:1::11]", "[::ffff:198.18.1.11]"),
        8,
        &["IPv4-mapped"],
    );
    rejects(
        &pool6_with("", V6_BACKEND).replace("[2001:2:0:2::10]", "[ff02::1]"),
        5,
        &["vip [ff02::1]:80 is a multicast address"],
    );
    rejects(
        &pool6_with("", V6_BACKEND).replace("[2001:2:0:2::10]", "[::]"),
        5,
        &["needs a specific address"],
    );
}

#[test]
fn udp_pools_and_flow_idle() {
    let c = p(&pool_with("protocol = \"udp\"\n", ONE_BACKEND)).unwrap();
    assert_eq!(c.pools[0].protocol, Protocol::Udp);
    assert_eq!(c.pools[0].flow_idle_ms, DEFAULT_UDP_FLOW_IDLE_MS);
    assert_eq!(c.pools[0].endpoint().to_string(), "198.18.2.10:80/udp");
    assert_eq!(
        c.pools[0].endpoint().protocol.ipproto(),
        lb_common::IPPROTO_UDP
    );
    assert_eq!(
        p(&pool_with("", ONE_BACKEND)).unwrap().pools[0].flow_idle_ms,
        0
    );
    let idle = |proto: &str, v: &str| {
        pool_with(
            &format!("protocol = \"{proto}\"\nflow_idle_ms = {v}\n"),
            ONE_BACKEND,
        )
    };
    assert_eq!(p(&idle("udp", "0")).unwrap().pools[0].flow_idle_ms, 0);
    assert_eq!(p(&idle("udp", "1000")).unwrap().pools[0].flow_idle_ms, 1000);
    assert_eq!(
        p(&idle("tcp", "900000")).unwrap().pools[0].flow_idle_ms,
        900_000
    );
    for v in ["1", "999"] {
        rejects(
            &idle("udp", v),
            7,
            &[&format!("flow_idle_ms {v} is below 1000"), "1 s resolution"],
        );
    }
    rejects(&idle("udp", "-5"), 7, &["-5", "expected u32"]);
    // A reload must see the idle time change.
    assert_ne!(
        p(&idle("udp", "1000")).unwrap(),
        p(&idle("udp", "2000")).unwrap()
    );
}

#[test]
fn tcp_and_udp_share_a_vip_and_a_backend_but_not_twice() {
    let second = |name: &str, proto: &str| {
        format!(
            "[[pool]]\nname = \"{name}\"\nvip = \"198.18.2.10:80\"\nprotocol = \"{proto}\"\n{}",
            ONE_BACKEND.replace("web-1", &format!("{name}-1"))
        )
    };
    let base = pool_with("", ONE_BACKEND);
    let c = p(&format!("{base}{}", second("dns", "udp"))).unwrap();
    assert_eq!(c.pools[1].endpoint(), Endpoint::udp(c.pools[0].vip));
    assert_eq!(c.pools[1].backends[0].addr, c.pools[0].backends[0].addr);
    rejects(
        &format!("{base}{}", second("api", "tcp")),
        11,
        &["duplicate vip 198.18.2.10:80 (tcp; also used by pool \"web\""],
    );
    let c = p(&format!(
        "{}{}",
        pool_with("protocol = \"udp\"\n", ONE_BACKEND),
        second("dns", "tcp")
    ))
    .unwrap();
    assert_eq!(c.pools.len(), 2);
}

#[test]
fn udp_health_and_the_port_override() {
    let h = |body: &str| pool_with(&format!("[pool.health]\n{body}"), ONE_BACKEND);
    let c = p(&h("kind = \"udp\"\npayload = \"ping\"\n")).unwrap();
    let health = &c.pools[0].health;
    assert_eq!(health.kind, HealthKind::Udp);
    assert_eq!(health.payload.as_deref(), Some("ping"));
    assert_eq!((health.path.as_ref(), health.port), (None, None));
    let addr: SocketAddr = "198.18.1.11:8080".parse().unwrap();
    assert_eq!(health.target(addr), addr);
    // No payload: an empty datagram.
    let c = p(&h("kind = \"udp\"\n")).unwrap();
    assert_eq!(c.pools[0].health.payload.as_deref(), Some(""));
    rejects(
        &h("payload = \"ping\"\n"),
        7,
        &["payload applies only to kind = \"udp\""],
    );
    rejects(
        &h("kind = \"http\"\npayload = \"ping\"\n"),
        8,
        &["payload applies only to kind = \"udp\""],
    );
    rejects(
        &h("kind = \"udp\"\npath = \"/x\"\n"),
        8,
        &["path applies only to kind = \"http\""],
    );
    let big = "x".repeat(MAX_UDP_PAYLOAD + 1);
    rejects(
        &h(&format!("kind = \"udp\"\npayload = \"{big}\"\n")),
        8,
        &["a UDP datagram carries at most 65507"],
    );
    for kind in ["tcp", "http", "udp"] {
        let c = p(&h(&format!("kind = \"{kind}\"\nport = 8081\n"))).unwrap();
        let health = &c.pools[0].health;
        assert_eq!(health.port, Some(8081), "{kind}");
        assert_eq!(health.target(addr), "198.18.1.11:8081".parse().unwrap());
        let v6: SocketAddr = "[2001:2:0:1::11]:53".parse().unwrap();
        assert_eq!(health.target(v6), "[2001:2:0:1::11]:8081".parse().unwrap());
    }
    rejects(&h("port = 0\n"), 7, &["health port must not be 0"]);
    rejects(&h("port = 70000\n"), 7, &["70000", "expected u16"]);
}

#[test]
fn tunnel_sources_per_family() {
    const PORT_80: &str = "[[pool.backend]]\nname = \"web-1\"\naddr = \"[2001:2:0:1::11]:80\"\n";
    let tunnel6 = |sources: &str| {
        pool6_with("mode = \"tunnel\"\n", PORT_80)
            .replace(HEAD, &format!("{HEAD}tunnel_source = [{sources}]\n"))
    };
    rejects(
        &tunnel6("\"198.18.1.1\""),
        7,
        &["is tunnel but [dataplane] has no IPv6 tunnel_source"],
    );
    let c = p(&tunnel6("\"198.18.1.1\", \"2001:2:0:1::1\"")).unwrap();
    assert_eq!(
        (c.dataplane.tunnel_source_v4, c.dataplane.tunnel_source_v6),
        (
            Some("198.18.1.1/32".parse().unwrap()),
            Some("2001:2:0:1::1/128".parse().unwrap())
        )
    );
    rejects(
        &tunnel6("\"2001:2:0:1::1\", \"2001:2:0:1::2\""),
        3,
        &["tunnel_source takes one address (or prefix) per family"],
    );
    let c = p(&tunnel6("\"2001:2:0:3::/124\"")).unwrap();
    assert_eq!(
        c.dataplane.tunnel_source_v6,
        Some("2001:2:0:3::/124".parse().unwrap())
    );
    rejects(
        &tunnel6("\"2001:2:0:3::/64\""),
        3,
        &["tunnel_source 2001:2:0:3::/64 is too large"],
    );
    rejects(
        &tunnel6("\"::\""),
        3,
        &["tunnel_source :: is not a host address"],
    );
    // An IPv4 pool is not served by an IPv6 source.
    let tunnel4 = pool_with(
        "mode = \"tunnel\"\n",
        "[[pool.backend]]\nname = \"web-1\"\naddr = \"198.18.1.11:80\"\n",
    )
    .replace(
        HEAD,
        &format!("{HEAD}tunnel_source = [\"2001:2:0:1::1\"]\n"),
    );
    rejects(&tunnel4, 7, &["no IPv4 tunnel_source"]);
    // dsr's port rule holds for IPv6 pools too.
    rejects(
        &pool6_with("mode = \"dsr\"\n", V6_BACKEND),
        4,
        &["is dsr but backend \"web-1\" listens on another port"],
    );
}

#[test]
fn ipv6_udp_example_parses() {
    let c = p(include_str!("../../../config/ipv6-udp.toml")).unwrap();
    let by = |n: &str| c.pool(n).unwrap();
    assert!(by("web6").vip.is_ipv6());
    assert_eq!(by("web6").backends.len(), 3);
    assert_eq!(
        (by("dns").protocol, by("dns").flow_idle_ms),
        (Protocol::Udp, 10_000)
    );
    assert_eq!(by("dns").health.kind, HealthKind::Udp);
    assert_eq!(by("dns").health.payload.as_deref(), Some("ping"));
    assert_eq!(
        (by("quic6").mode, by("quic6").flow_idle_ms),
        (Mode::Tunnel, DEFAULT_UDP_FLOW_IDLE_MS)
    );
    assert_eq!(by("quic6").health.port, Some(8443));
    assert!(c.dataplane.tunnel_source_v6.is_some());
}

#[test]
fn dsr_port_rule() {
    let mut c = p(&pool_with("", ONE_BACKEND)).unwrap();
    let pool = &mut c.pools[0];
    assert_eq!(check_dsr_ports(pool), Err("web-1".to_string()));
    pool.backends[0].addr.set_port(80);
    assert_eq!(check_dsr_ports(pool), Ok(()));
}

#[test]
fn health_rules() {
    let h = |body: &str| pool_with(&format!("[pool.health]\n{body}"), ONE_BACKEND);
    rejects(&h("rise = 0\n"), 7, &["rise must be at least 1"]);
    rejects(&h("fall = 0\n"), 7, &["fall must be at least 1"]);
    rejects(
        &h("interval_ms = 0\n"),
        7,
        &["interval_ms must be at least 50"],
    );
    rejects(
        &h("interval_ms = 49\ntimeout_ms = 10\n"),
        7,
        &["at least 50"],
    );
    assert!(p(&h("interval_ms = 50\ntimeout_ms = 10\n")).is_ok());
    rejects(
        &h("interval_ms = 300\ntimeout_ms = 300\n"),
        8,
        &["timeout_ms (300) must be less than interval_ms (300)"],
    );
    rejects(&h("interval_ms = 200\n"), 7, &["timeout_ms (300)"]);
    rejects(
        &h("kind = \"http\"\npath = \"healthz\"\n"),
        8,
        &["must start with '/'"],
    );
    rejects(
        &h("kind = \"http\"\npath = \"/a b\"\n"),
        8,
        &["must start with '/'"],
    );
    rejects(&h("path = \"/x\"\n"), 7, &["only to kind = \"http\""]);
    rejects(
        &h("kind = \"http\"\nexpect_status = 42\n"),
        8,
        &["not an HTTP status"],
    );
    rejects(&h("kind = \"smtp\"\n"), 7, &["smtp"]);
}

#[test]
fn load_rules() {
    let l = |body: &str| pool_with(&format!("[pool.load]\n{body}"), ONE_BACKEND);
    rejects(
        &l("factors = { cpu = 0.5, mem = 0.2, disk = 0.1, net = 0.1 }\n"),
        7,
        &["factors must sum to 1"],
    );
    rejects(
        &l("factors = { cpu = 1.5, mem = -0.5 }\n"),
        7,
        &["outside [0, 1]"],
    );
    rejects(&l("factors = { gpu = 1.0 }\n"), 7, &["gpu"]);
    rejects(
        &l("high_watermark = 0.5\nlow_watermark = 0.5\n"),
        8,
        &["low_watermark (0.5) must be below high_watermark (0.5)"],
    );
    rejects(&l("high_watermark = 1.2\n"), 7, &["outside [0, 1]"]);
    rejects(&l("low_watermark = -0.1\n"), 7, &["outside [0, 1]"]);
    rejects(
        &l("interval_ms = 0\n"),
        7,
        &["interval_ms must be at least 1"],
    );
    let ok = p(&l("factors = { cpu = 0.7, net = 0.3 }\n")).unwrap();
    let f = ok.pools[0].load.as_ref().unwrap().factors;
    assert_eq!((f.cpu, f.mem, f.disk, f.net), (0.7, 0.0, 0.0, 0.3));
}

#[test]
fn backend_rules() {
    let b = |extra: &str| {
        pool_with(
            "",
            &format!("[[pool.backend]]\nname = \"web-1\"\naddr = \"198.18.1.11:8080\"\n{extra}"),
        )
    };
    rejects(
        &b("weight = 0\n"),
        9,
        &["weight 0 is out of range 1..=1000"],
    );
    rejects(&b("weight = 1001\n"), 9, &["weight 1001"]);
    rejects(&b("role = \"backup\"\n"), 9, &["backup"]);
    rejects(&pool_with("", ""), 4, &["has no [[pool.backend]]"]);
    rejects(
        &pool_with(
            "",
            "[[pool.backend]]\nname = \"\"\naddr = \"198.18.1.11:80\"\n",
        ),
        7,
        &["backend name must not be empty"],
    );
    rejects(
        &format!("{HEAD}[[pool]]\nname = \"\"\nvip = \"198.18.2.10:80\"\n{ONE_BACKEND}"),
        4,
        &["pool name must not be empty"],
    );
    rejects(
        &pool_with("min_active = 2\n", ONE_BACKEND),
        6,
        &["min_active 2 is more than the 1 backends"],
    );
}

#[test]
fn dataplane_rules() {
    let d = |body: &str| {
        format!(
            "[dataplane]\n{body}[[pool]]\nname = \"web\"\nvip = \"198.18.2.10:80\"\n{ONE_BACKEND}"
        )
    };
    rejects(
        &d("interfaces = [\"eth0\"]\nring_size = 65536\n"),
        3,
        &["ring_size 65536 is not prime"],
    );
    rejects(
        &d("interfaces = [\"eth0\"]\nring_size = 97\n"),
        3,
        &["smaller than 100 × 1 backends"],
    );
    rejects(
        &d("interfaces = [\"eth0\"]\nring_size = 2000003\n"),
        3,
        &["larger than the maximum"],
    );
    rejects(
        &d("interfaces = [\"eth0\"]\nflow_table_size = 0\n"),
        3,
        &["flow_table_size must be at least 1"],
    );
    rejects(&d("interfaces = []\n"), 2, &["at least one interface"]);
    rejects(
        &d("interfaces = [\"eth0\", \"eth1\",\n  \"eth0\"]\n"),
        3,
        &["duplicate interface \"eth0\" (first at line 2)"],
    );
    rejects(&d("xdp_mode = \"auto\"\n"), 1, &["interfaces"]);
    let text = format!(
        "{HEAD}[control]\nmetrics_listen = \"localhost\"\n[[pool]]\nname = \"web\"\nvip = \"198.18.2.10:80\"\n{ONE_BACKEND}"
    );
    rejects(&text, 4, &["metrics_listen \"localhost\""]);
}

#[test]
fn ring_must_cover_the_largest_pool() {
    let mut backends = String::new();
    for i in 0..3 {
        backends.push_str(&format!(
            "[[pool.backend]]\nname = \"b{i}\"\naddr = \"198.18.1.{}:80\"\n",
            i + 1
        ));
    }
    let text = format!(
        "[dataplane]\ninterfaces = [\"eth0\"]\nring_size = 293\n[[pool]]\nname = \"web\"\nvip = \"198.18.2.10:80\"\n{backends}"
    );
    rejects(&text, 3, &["need at least 300"]);
    let ok = text.replace("293", "307");
    assert!(p(&ok).is_ok());
}

#[test]
fn map_limits() {
    let mut text = HEAD.to_string();
    for i in 0..=MAX_VIPS {
        text.push_str(&format!(
            "[[pool]]\nname = \"p{i}\"\nvip = \"198.18.2.{}:{}\"\n{ONE_BACKEND}",
            i % 250 + 1,
            1000 + i
        ));
    }
    let err = p(&text).unwrap_err().to_string();
    assert!(err.contains("too many pools"), "{err}");

    // MAX_BACKENDS + 1 backends over several pools (a ring of
    // 100 × 1000 entries covers the largest).
    let mut text = "[dataplane]\ninterfaces = [\"eth0\"]\nring_size = 100003\n".to_string();
    let mut n = 0;
    for pool in 0..5 {
        text.push_str(&format!(
            "[[pool]]\nname = \"p{pool}\"\nvip = \"198.18.2.{}:80\"\n",
            pool + 1
        ));
        for _ in 0..1000 {
            if n > MAX_BACKENDS {
                break;
            }
            text.push_str(&format!(
                "[[pool.backend]]\nname = \"b{n}\"\naddr = \"198.18.1.1:{}\"\n",
                n + 1
            ));
            n += 1;
        }
    }
    let err = p(&text).unwrap_err().to_string();
    assert!(err.contains("too many backends"), "{err}");
}

#[test]
fn on_empty_defaults_to_reject_and_accepts_drop() {
    let c = p(&pool_with("", ONE_BACKEND)).unwrap();
    assert_eq!(c.pools[0].on_empty, OnEmpty::Reject);
    let c = p(&pool_with("on_empty = \"drop\"\n", ONE_BACKEND)).unwrap();
    assert_eq!(c.pools[0].on_empty, OnEmpty::Drop);
    let c = p(&pool_with("on_empty = \"reject\"\n", ONE_BACKEND)).unwrap();
    assert_eq!(c.pools[0].on_empty, OnEmpty::Reject);
    // The full example says so explicitly; the minimal one takes the default.
    assert_eq!(p(FULL).unwrap().pools[0].on_empty, OnEmpty::Reject);
    assert_eq!(p(MINIMAL).unwrap().pools[0].on_empty, OnEmpty::Reject);
}

#[test]
fn on_empty_rejects_unknown_values_and_types_with_position() {
    let err = p(&pool_with("on_empty = \"bounce\"\n", ONE_BACKEND))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "xdplb.toml:6:12: on_empty \"bounce\" is not one of \"reject\" (answer with a RST \
         from the VIP) or \"drop\""
    );
    rejects(
        &pool_with("on_empty = \"Reject\"\n", ONE_BACKEND),
        6,
        &["Reject"],
    );
    rejects(
        &pool_with("on_empty = true\n", ONE_BACKEND),
        6,
        &["invalid type: boolean `true`, expected a string"],
    );
    // In the wrong table it is an unknown key, named with its line.
    rejects(
        &pool_with("[pool.health]\non_empty = \"drop\"\n", ONE_BACKEND),
        7,
        &["unknown field", "on_empty"],
    );
}

#[test]
fn on_empty_is_part_of_the_meaning() {
    let a = p(&pool_with("", ONE_BACKEND)).unwrap();
    let b = p(&pool_with("on_empty = \"drop\"\n", ONE_BACKEND)).unwrap();
    assert_ne!(a, b, "a reload must see on_empty change");
}

#[test]
fn configs_compare_by_meaning() {
    let a = p(&pool_with("", ONE_BACKEND)).unwrap();
    let b = p(&pool_with("\n\nmode = \"nat\"\n", ONE_BACKEND)).unwrap();
    assert_eq!(a, b);
}

#[test]
fn announce_defaults_and_values() {
    assert_eq!(p(&pool_with("", ONE_BACKEND)).unwrap().announce, None);
    let c = p(&format!("[announce]\n{}", pool_with("", ONE_BACKEND))).unwrap();
    let a = c.announce.unwrap();
    assert_eq!(a.speaker, Speaker::Bird);
    assert_eq!(a.control_socket, Path::new(DEFAULT_BIRD_SOCKET));
    assert_eq!(a.routes_file, Path::new(DEFAULT_ROUTES_FILE));
    assert_eq!(a.hold_ms, DEFAULT_HOLD_MS);
    let text = format!(
        "[announce]\nspeaker = \"bird\"\ncontrol_socket = \"/tmp/b.ctl\"\nroutes_file = \"/tmp/v.conf\"\nhold_ms = 2500\n{}",
        pool_with("", ONE_BACKEND)
    );
    let a = p(&text).unwrap().announce.unwrap();
    assert_eq!(a.control_socket, Path::new("/tmp/b.ctl"));
    assert_eq!(a.routes_file, Path::new("/tmp/v.conf"));
    assert_eq!(a.hold_ms, 2500);
}

#[test]
fn fleet_example_announces_through_bird() {
    let c = p(include_str!("../../../config/fleet.toml")).unwrap();
    let a = c.announce.expect("[announce]");
    assert_eq!(a.routes_file, Path::new("/run/xdplb/vips.conf"));
    assert_eq!(a.control_socket, Path::new("/run/bird/bird.ctl"));
    assert_eq!(p(FULL).unwrap().announce, None);
}

#[test]
fn announce_errors_name_line_and_key() {
    let with = |section: &str| {
        format!(
            "{HEAD}{section}{}",
            &pool_with("", ONE_BACKEND)[HEAD.len()..]
        )
    };
    rejects(
        &with("[announce]\nspeaker = \"frr\"\n"),
        4,
        &["speaker \"frr\" is not supported", "bird"],
    );
    rejects(
        &with("[announce]\nroutes_file = \"vips.conf\"\n"),
        4,
        &["routes_file", "absolute"],
    );
    rejects(
        &with("[announce]\ncontrol_socket = \"bird.ctl\"\n"),
        4,
        &["control_socket", "absolute"],
    );
    rejects(&with("[announce]\npeers = 2\n"), 4, &["peers"]);
    rejects(
        &with("[announce]\nhold_ms = 500\n"),
        4,
        &["hold_ms 500", "1000..=600000", "restart"],
    );
}

#[test]
fn answers_per_sec_defaults_and_takes_zero() {
    let c = p(&pool_with("", ONE_BACKEND)).unwrap();
    assert_eq!(
        c.dataplane.answers_per_sec,
        lb_common::limits::DEFAULT_ANSWERS_PER_SEC
    );
    let text = pool_with("", ONE_BACKEND).replace(HEAD, &format!("{HEAD}answers_per_sec = 0\n"));
    assert_eq!(p(&text).unwrap().dataplane.answers_per_sec, 0);
    rejects(
        &pool_with("", ONE_BACKEND).replace(HEAD, &format!("{HEAD}answers_per_sec = -1\n")),
        3,
        &["expected u32"],
    );
}

#[test]
fn extra_macs_are_unicast_macs_named_by_line_and_column() {
    let with =
        |v: &str| pool_with("", ONE_BACKEND).replace(HEAD, &format!("{HEAD}extra_macs = [{v}]\n"));
    let c = p(&with("\"00:00:5e:00:01:33\", \"02:AB:cd:00:00:01\"")).unwrap();
    assert_eq!(
        c.dataplane.extra_macs,
        vec![[0, 0, 0x5e, 0, 1, 0x33], [2, 0xab, 0xcd, 0, 0, 1]]
    );
    assert!(p(&pool_with("", ONE_BACKEND))
        .unwrap()
        .dataplane
        .extra_macs
        .is_empty());
    rejects(
        &with("\"00:00:5e:00:01:33\", \"00:00:5e:00:01\""),
        3,
        &["3:36", "\"00:00:5e:00:01\" is not a MAC address"],
    );
    rejects(&with("\"zz:00:5e:00:01:33\""), 3, &["is not a MAC address"]);
    rejects(&with("\"01:00:5e:00:00:01\""), 3, &["is a group"]);
    rejects(&with("\"ff:ff:ff:ff:ff:ff\""), 3, &["is a group"]);
    rejects(&with("\"00:00:00:00:00:00\""), 3, &["all zero"]);
    let many: Vec<String> = (0..17)
        .map(|i| format!("\"02:00:00:00:00:{i:02x}\""))
        .collect();
    rejects(&with(&many.join(", ")), 3, &["at most 16"]);
}

const SYNC_SECRET: &str = "0123456789abcdef-pair";

fn with_sync(section: &str) -> String {
    // HEAD is lines 1–2, [sync] line 3, its keys from line 4.
    format!(
        "{HEAD}[sync]\n{section}{}",
        &pool_with("", ONE_BACKEND)[HEAD.len()..]
    )
}

#[test]
fn sync_values_and_secret_hidden() {
    assert_eq!(p(&pool_with("", ONE_BACKEND)).unwrap().sync, None);
    let c = p(&with_sync(&format!(
        "listen = \"198.18.1.2:7946\"\npeers = [\"198.18.1.3:7946\", \"[2001:2:0:1::3]:7946\"]\nsecret = \"{SYNC_SECRET}\"\n"
    )))
    .unwrap();
    let s = c.sync.unwrap();
    assert_eq!(s.listen, "198.18.1.2:7946".parse().unwrap());
    assert_eq!(
        s.peers,
        vec![
            "198.18.1.3:7946".parse().unwrap(),
            "[2001:2:0:1::3]:7946".parse().unwrap()
        ]
    );
    assert_eq!(s.secret, SYNC_SECRET);
    assert!(!format!("{s:?}").contains(SYNC_SECRET), "Debug hides it");
}

#[test]
fn sync_errors_name_line_and_reason() {
    let listen = "listen = \"198.18.1.2:7946\"\n";
    let peer = "peers = [\"198.18.1.3:7946\"]\n";
    let secret = format!("secret = \"{SYNC_SECRET}\"\n");
    rejects(
        &with_sync(&format!("{listen}{peer}")),
        4,
        &["[sync] needs secret"],
    );
    rejects(
        &with_sync(&format!("{listen}{peer}secret = \"short\"\n")),
        6,
        &["secret is 5 bytes", "at least 16"],
    );
    rejects(
        &with_sync(&format!("listen = \"0.0.0.0:7946\"\n{peer}{secret}")),
        4,
        &["must name this gateway's address"],
    );
    rejects(
        &with_sync(&format!("{listen}peers = []\n{secret}")),
        5,
        &["peers: 0 given"],
    );
    rejects(
        &with_sync(&format!(
            "{listen}peers = [\"198.18.1.3:7946\", \"198.18.1.3:7946\"]\n{secret}"
        )),
        5,
        &["peer 198.18.1.3:7946 is listed twice"],
    );
    rejects(
        &with_sync(&format!("{listen}peers = [\"198.18.1.2:7946\"]\n{secret}")),
        5,
        &["is this gateway's own listen address"],
    );
    rejects(
        &with_sync(&format!("{listen}peers = [\"gw-b:7946\"]\n{secret}")),
        5,
        &["invalid socket address"],
    );
    rejects(
        &with_sync(&format!("{listen}{peer}{secret}port = 1\n")),
        7,
        &["unknown field", "port"],
    );
}
