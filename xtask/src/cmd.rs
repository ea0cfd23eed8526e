//! Running external commands: each is printed before it runs, stdin is
//! closed (CI has none), and a failure names the command and its status.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A command that is echoed as `+ prog args…` before it runs.
pub struct Cmd {
    inner: Command,
    shown: String,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let mut inner = Command::new(program.as_ref());
        inner.current_dir(repo_root()).stdin(Stdio::null());
        Self {
            inner,
            shown: program.as_ref().to_string_lossy().into_owned(),
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for arg in args {
            self.shown.push(' ');
            self.shown.push_str(&arg.as_ref().to_string_lossy());
            self.inner.arg(arg);
        }
        self
    }

    pub fn env(mut self, key: &str, val: impl AsRef<OsStr>) -> Self {
        self.shown = format!("{key}={} {}", val.as_ref().to_string_lossy(), self.shown);
        self.inner.env(key, val);
        self
    }

    /// Removes variables the outer cargo/rustup set (e.g. `RUSTUP_TOOLCHAIN`)
    /// so that a `+toolchain` child picks its own.
    pub fn env_remove(mut self, key: &str) -> Self {
        self.inner.env_remove(key);
        self
    }

    /// Runs with inherited stdout/stderr; fails on a non-zero exit.
    pub fn run(mut self) -> Result<()> {
        println!("+ {}", self.shown);
        let status = self
            .inner
            .status()
            .with_context(|| format!("cannot start `{}`", self.shown))?;
        if !status.success() {
            bail!("`{}` failed ({status})", self.shown);
        }
        Ok(())
    }

    /// The command itself, printed as [`run`](Cmd::run) prints it, for a
    /// caller that reads its output while it runs.
    pub fn into_command(self) -> Command {
        println!("+ {}", self.shown);
        self.inner
    }

    /// Runs quietly and returns stdout; fails on a non-zero exit.
    pub fn read(mut self) -> Result<String> {
        let out = self
            .inner
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("cannot start `{}`", self.shown))?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                self.shown,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs quietly; true when the command started and exited 0.
    pub fn succeeds(mut self) -> bool {
        self.inner
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

/// `cargo` of the toolchain that runs xtask (no `+toolchain` needed).
pub fn cargo(args: &[&str]) -> Cmd {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Cmd::new(cargo).args(args)
}

/// The workspace root (xtask lives one level below it). `cargo run` sets
/// `CARGO_MANIFEST_DIR` at run time too; prefer it to the compile-time value,
/// which is stale when a shared target directory serves two checkouts.
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The cargo target directory, as cargo itself resolves it
/// (honours `CARGO_TARGET_DIR` and `.cargo/config.toml`).
pub fn target_dir() -> Result<PathBuf> {
    let json = cargo(&["metadata", "--format-version", "1", "--no-deps"]).read()?;
    let meta: serde_json::Value =
        serde_json::from_str(&json).context("cannot parse `cargo metadata` output")?;
    let dir = meta["target_directory"]
        .as_str()
        .context("`cargo metadata` has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// Prints a step header.
pub fn header(title: &str) {
    println!("\n==> {title}");
}
