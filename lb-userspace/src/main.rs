//! `xdplb`: parses the command line, sets up logging and the runtime, runs
//! the subcommand ([`xdplb::cli::execute`]) and turns a failure into one
//! `error: ...` line on stderr and exit status 1.
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use xdplb::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    init_logging();
    // One thread drives every task: the controller's work is a thousand
    // small wakeups a second (probe timers, sockets becoming ready,
    // reports), and a multi-thread scheduler adds a wakeup of an idle
    // worker, to steal, to most of them: about a tenth of the controller's
    // CPU when probing 1000 backends, measured side by side. What could
    // block the thread for long (the flow census, a metrics scrape) runs
    // on the blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(cli::execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            fail(&e.to_string());
            ExitCode::from(e.exit_code())
        }
    }
}

/// RUST_LOG filters; info by default. Under systemd, when stderr is the
/// journal (`JOURNAL_STREAM` names its device and inode), records go to
/// journald natively: each at its own priority (ERROR is `-p err`), with
/// its fields, and without a timestamp of ours beside the journal's.
/// Otherwise plain lines on stderr, so stdout stays clean for `--json`.
fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journald.with_syslog_identifier("xdplb".to_string()))
                .init();
            return;
        }
    }
    // Colour only for a terminal: logs captured to a file stay plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

/// Whether stderr is the stream systemd connected to the journal
/// (sd_journal_stream_fd(3): `JOURNAL_STREAM=DEV:INODE` of that stream; a
/// redirected stderr no longer matches).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let fd = std::io::stderr();
    let Ok(meta) = std::os::fd::AsFd::as_fd(&fd)
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
    else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Prints `error: MESSAGE` on one line.
fn fail(message: &str) -> ExitCode {
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("error: {one_line}");
    ExitCode::FAILURE
}

/// `--help` and `--version` print as clap formats them and succeed; a
/// usage error becomes one `error:` line (clap's message, without the
/// usage block) and exit status 2, as clap would.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let text = e.render().to_string();
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("error: {message} (see --help)");
    ExitCode::from(2)
}
