//! `xdplb man --out DIR` (hidden): man pages and shell completions generated
//! from the clap definitions, for packagers. Writes
//! `DIR/man1/xdplb.1` and `DIR/man1/xdplb-<command>.1` (one per
//! subcommand, visible ones only; `xdplb-set-weight.1` for a nested one),
//! and `DIR/completions/` with
//! `xdplb.bash`, `_xdplb` (zsh) and `xdplb.fish`.
use std::{fs, io, path::Path};

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

pub fn generate(out: &Path) -> io::Result<()> {
    let cmd = Cli::command();
    let man1 = out.join("man1");
    fs::create_dir_all(&man1)?;
    render(&cmd, &man1.join("xdplb.1"))?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub, &[sub.get_name()], &man1)?;
        for nested in sub.get_subcommands().filter(|s| !s.is_hide_set()) {
            page(nested, &[sub.get_name(), nested.get_name()], &man1)?;
        }
    }
    let comp = out.join("completions");
    fs::create_dir_all(&comp)?;
    for (shell, file) in [
        (Shell::Bash, "xdplb.bash"),
        (Shell::Zsh, "_xdplb"),
        (Shell::Fish, "xdplb.fish"),
    ] {
        let mut f = fs::File::create(comp.join(file))?;
        clap_complete::generate(shell, &mut Cli::command(), "xdplb", &mut f);
    }
    Ok(())
}

/// The page of `xdplb WORDS…`, named like git's: `man xdplb-run`,
/// `man xdplb-set-weight`.
fn page(sub: &clap::Command, words: &[&str], man1: &Path) -> io::Result<()> {
    let name = format!("xdplb-{}", words.join("-"));
    // clap takes a &'static str here (without its `string` feature);
    // this one-shot command leaks a few names.
    let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
    let page = sub
        .clone()
        .name(leaked)
        .bin_name(format!("xdplb {}", words.join(" ")));
    render(&page, &man1.join(format!("{name}.1")))
}

fn render(cmd: &clap::Command, path: &Path) -> io::Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("1")
        .manual("xdplb manual")
        .render(&mut buf)?;
    fs::write(path, buf)
}
