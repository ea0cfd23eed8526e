//! What can be wrong with a config, each error placed at `FILE:LINE:COL`.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::raw;
use super::validate::Source;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {reason}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("dataplane.interfaces: no network interface {name:?} on this host")]
    MissingInterface { name: String },
    /// A config with every pool commented out (the packaged one) checks,
    /// but there is nothing to run.
    #[error("nothing to balance: no [[pool]] defined (uncomment or add one)")]
    NoPools,
    #[error(
        "pool {pool:?} is dsr but backend {backend:?} ({addr}) is on no segment of {ifaces}: \
         dsr sends frames by MAC, so a backend must share a subnet with an interface \
         (use mode = \"tunnel\" for a routed backend)"
    )]
    DsrNotAttached {
        pool: String,
        backend: String,
        addr: IpAddr,
        ifaces: String,
    },
    #[error(
        "pool {pool:?} is tunnel but backend {backend:?} ({addr}) {route}: the program \
         sends the outer packet itself, out of one of {ifaces} (the kernel would drop it \
         as martian: its source is this host's); route the backend through one of them"
    )]
    TunnelNotRouted {
        pool: String,
        backend: String,
        addr: IpAddr,
        /// What the kernel's route lookup said: "is routed out of eth9",
        /// "has no route".
        route: String,
        ifaces: String,
    },
    #[error(
        "tunnel_source {prefix}: {addr} is not an address of this host ({why}); every \
         address of the prefix is an outer source, and routers send their ICMP errors \
         to it: make them all local, e.g. `ip route add local {prefix} dev lo`"
    )]
    TunnelSourceNotLocal {
        prefix: ipnet::IpNet,
        addr: IpAddr,
        /// What the kernel's route lookup said.
        why: String,
    },
}

impl ConfigError {
    /// A host check's error (an interface missing here, a dsr backend on no
    /// segment, a tunnel backend routed elsewhere) at the place in `path`
    /// it is about — the interface's name or the backend's `addr` — as a
    /// parse error names it. The checks run on the validated config, which
    /// keeps no positions, so the file is read again: this is the error
    /// path only. Any other error, or a file that no longer says so, is
    /// returned as it is.
    pub fn placed(self, path: &Path) -> ConfigError {
        let Ok(text) = std::fs::read_to_string(path) else {
            return self;
        };
        let Ok(raw) = toml::from_str::<raw::Config>(&text) else {
            return self;
        };
        let span = match &self {
            ConfigError::MissingInterface { name } => raw
                .dataplane
                .interfaces
                .get_ref()
                .iter()
                .find(|i| i.get_ref() == name)
                .map(|i| i.span()),
            ConfigError::DsrNotAttached { pool, backend, .. }
            | ConfigError::TunnelNotRouted { pool, backend, .. } => raw
                .pool
                .iter()
                .find(|p| p.name.get_ref() == pool)
                .and_then(|p| p.backend.iter().find(|b| b.name.get_ref() == backend))
                .map(|b| b.addr.span()),
            ConfigError::TunnelSourceNotLocal { .. } => {
                raw.dataplane.tunnel_source.as_ref().map(|t| t.span())
            }
            _ => None,
        };
        match span {
            Some(span) => Source {
                file: path,
                text: &text,
            }
            .err(span, self.to_string()),
            None => self,
        }
    }
}
