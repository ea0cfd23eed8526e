//! The operator's TOML configuration: its schema, its defaults and its
//! validation.
//!
//! Parsing happens in two layers. A private `raw` layer mirrors the file
//! exactly, with `deny_unknown_fields` everywhere and a source span on every
//! value that validation may need to point at; [`parse`] validates it and
//! converts it into the public [`Config`], which holds plain values only, so
//! two configs compare equal when they mean the same thing (reload diffs them)
//! wherever their keys sit in the file. Every error carries `FILE:LINE:COL`.
//!
//! Nothing here does I/O except [`load`] (which reads the file) and
//! [`check_interfaces_exist`] (which asks this host's kernel, and so runs at
//! `xdplb run`, never at `xdplb check` on another host).
//!
//! Layout:
//! - `schema`: the validated [`Config`], its defaults and bounds.
//! - `raw`: the file as written, with spans.
//! - `validate`: [`parse`], raw into validated, every error placed.
//! - `error`: [`ConfigError`].
//! - `host`: checks of this host against a config (interfaces, `dsr`
//!   segments, `tunnel` routes).
mod error;
mod host;
mod raw;
mod schema;
mod validate;

#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use host::{check_host_if_gateway, check_interfaces_exist};
pub use schema::*;
pub use validate::{check_dsr_ports, load, parse};
