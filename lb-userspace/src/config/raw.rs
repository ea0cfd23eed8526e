//! The file as written, with spans. Optional keys are `Option` here so
//! validation can tell "absent, defaulted" from "given" and point at the
//! given value.
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::schema::{Factors, HealthKind, Mode, OnDown, Protocol, Role, XdpMode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dataplane: Dataplane,
    pub control: Option<Control>,
    pub announce: Option<Announce>,
    pub sync: Option<FlowSync>,
    #[serde(default)]
    pub pool: Vec<Pool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    pub speaker: Option<Spanned<String>>,
    pub control_socket: Option<Spanned<PathBuf>>,
    pub routes_file: Option<Spanned<PathBuf>>,
    pub hold_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSync {
    pub listen: Spanned<SocketAddr>,
    pub peers: Spanned<Vec<Spanned<SocketAddr>>>,
    pub secret: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataplane {
    pub interfaces: Spanned<Vec<Spanned<String>>>,
    pub xdp_mode: Option<XdpMode>,
    pub pin_path: Option<PathBuf>,
    pub flow_table_size: Option<Spanned<u32>>,
    pub ring_size: Option<Spanned<u32>>,
    pub max_flow_inserts_per_sec: Option<u32>,
    /// Addresses or prefixes ("198.18.1.1", "198.18.1.0/28").
    pub tunnel_source: Option<Spanned<Vec<String>>>,
    pub answers_per_sec: Option<u32>,
    pub extra_macs: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    pub admin_socket: Option<PathBuf>,
    pub metrics_listen: Option<Spanned<String>>,
    pub state_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub name: Spanned<String>,
    pub vip: Spanned<SocketAddr>,
    pub protocol: Option<Protocol>,
    pub flow_idle_ms: Option<Spanned<u32>>,
    pub mode: Option<Spanned<Mode>>,
    pub min_active: Option<Spanned<u32>>,
    /// A string checked by [`super::on_empty`], so an unknown value or a
    /// wrong type gets a message naming the key and the choices.
    pub on_empty: Option<Spanned<String>>,
    pub on_down: Option<OnDown>,
    pub slow_start_ms: Option<u64>,
    pub health: Option<Health>,
    pub load: Option<Load>,
    #[serde(default)]
    pub backend: Vec<Backend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub kind: Option<HealthKind>,
    pub interval_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub rise: Option<Spanned<u32>>,
    pub fall: Option<Spanned<u32>>,
    pub path: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<u16>>,
    pub port: Option<Spanned<u16>>,
    pub payload: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    pub agent_port: Option<Spanned<u16>>,
    pub interval_ms: Option<Spanned<u64>>,
    pub factors: Option<Spanned<Factors>>,
    pub high_watermark: Option<Spanned<f64>>,
    pub low_watermark: Option<Spanned<f64>>,
    pub scale_up_after_ms: Option<u64>,
    pub scale_down_after_ms: Option<u64>,
    pub slow_start_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub name: Spanned<String>,
    pub addr: Spanned<SocketAddr>,
    pub weight: Option<Spanned<u32>>,
    pub role: Option<Role>,
}
