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
    // RUST_LOG filters; info by default. Logs go to stderr so stdout stays
    // clean for `--json`.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a terminal: logs captured to a file stay plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
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
        Err(e) => fail(&e.to_string()),
    }
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
