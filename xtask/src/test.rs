//! `cargo xtask test`: the CI pipeline. Each step prints a header. A
//! failing fmt, clippy or package step does not stop the run (the tests
//! still run, so one failure hides nothing); a failing release build does,
//! since the namespace tests run that binary. `cargo test` runs with
//! `--no-fail-fast`; its output streams as usual and is read on the way to
//! a summary at the end: every failing test by name, every test binary
//! that failed without naming a test (a crash), and how many tests were
//! skipped and why.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;

use crate::cmd::{cargo, header, target_dir};
use anyhow::{bail, Context, Result};

/// Crates linted with clippy (lb-ebpf is built for BPF by lb-userspace's
/// build script; checking it for the host pulls std in twice).
const CLIPPY_CRATES: &[&str] = &["lb-common", "lb-userspace", "xtask", "xdplb-tests"];

/// Crates whose tests run.
const TEST_CRATES: &[&str] = &["lb-common", "lb-userspace", "xtask", "xdplb-tests"];

/// Where tests that skip record themselves (`xdplb_tests::skip_or_fail`
/// and its twin in lb-userspace/tests/cli.rs): one `binary::test<TAB>reason`
/// line each. Tests skip only under `XDPLB_ALLOW_SKIP=1`; otherwise what
/// would skip fails.
pub const SKIP_LOG_ENV: &str = "XDPLB_SKIP_LOG";

pub fn run() -> Result<()> {
    crate::setup::run(crate::setup::Step::Test).context("setup")?;
    let mut failed_steps: Vec<String> = Vec::new();

    header("test: cargo fmt --all --check");
    if let Err(e) = cargo(&["fmt", "--all", "--check"]).run() {
        failed_steps.push(format!("{e:#}"));
    }

    header("test: cargo clippy");
    let mut args = vec!["clippy"];
    args.extend(CLIPPY_CRATES.iter().flat_map(|c| ["-p", c]));
    args.extend(["--all-targets", "--", "-D", "warnings"]);
    if let Err(e) = cargo(&args).run() {
        failed_steps.push(format!("{e:#}"));
    }

    header("test: cargo build -p lb-userspace --release");
    cargo(&["build", "-p", "lb-userspace", "--release"]).run()?;
    let target = target_dir()?;
    let bin = target.join("release").join("xdplb");
    anyhow::ensure!(bin.is_file(), "release build produced no {}", bin.display());
    // The upgrade package first: cargo-deb removes older packages of the
    // same name from target/debian when it builds one elsewhere.
    let upgrade = match crate::deb::upgrade(&bin) {
        Ok(deb) => Some(deb),
        Err(e) => {
            failed_steps.push(format!("cargo xtask deb (upgrade package): {e:#}"));
            None
        }
    };
    let deb = match crate::deb::run(true) {
        Ok(deb) => Some(deb),
        Err(e) => {
            failed_steps.push(format!("cargo xtask deb: {e:#}"));
            None
        }
    };

    header("test: cargo test --no-fail-fast");
    let skip_log = target.join("xdplb-skipped.log");
    match std::fs::remove_file(&skip_log) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", skip_log.display())),
    }
    let mut args = vec!["test", "--no-fail-fast"];
    args.extend(TEST_CRATES.iter().flat_map(|c| ["-p", c]));
    // Namespace tests share the host (bpffs, CPU): run them one at a time.
    args.extend(["--", "--test-threads=1"]);
    let mut cmd = cargo(&args)
        .env("XDPLB_BIN", &bin)
        .env(SKIP_LOG_ENV, &skip_log);
    if let Some(deb) = &deb {
        cmd = cmd.env("XDPLB_DEB", deb);
    }
    if let Some(upgrade) = &upgrade {
        cmd = cmd.env("XDPLB_DEB_UPGRADE", upgrade);
    }
    let (status, results) = stream_tests(cmd.into_command())?;
    let skipped = read_skips(&skip_log)?;

    header("test: summary");
    let summary = results.summary(&skipped);
    print!("{summary}");
    for step in &failed_steps {
        println!("step failed: {step}");
    }
    if !status.success() && results.failures() == 0 {
        println!("cargo test failed ({status}) without a failing test or target in its output");
    }
    if !failed_steps.is_empty() || !status.success() || results.failures() > 0 {
        bail!(
            "{} failing test(s), {} failing target(s), {} failed step(s)",
            results.failed.len(),
            results.failed_targets_without_test().len(),
            failed_steps.len()
        );
    }
    header("test: all passed");
    Ok(())
}

/// Which of the child's streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

/// Runs `cmd`, copying its stdout and stderr through as they come (byte
/// for byte, so libtest's `test name ... ` shows while the test runs), and
/// parses their lines.
fn stream_tests(mut cmd: std::process::Command) -> Result<(std::process::ExitStatus, TestRun)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let (tx, rx) = mpsc::channel::<(Stream, String)>();
    let pump =
        |mut from: Box<dyn Read + Send>, which: Stream, tx: mpsc::Sender<(Stream, String)>| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut line = Vec::new();
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let chunk = &buf[..n];
                    // A closed terminal is no reason to stop reading.
                    let _ = match which {
                        Stream::Out => {
                            let mut o = std::io::stdout().lock();
                            o.write_all(chunk).and_then(|()| o.flush())
                        }
                        Stream::Err => {
                            let mut e = std::io::stderr().lock();
                            e.write_all(chunk).and_then(|()| e.flush())
                        }
                    };
                    for &b in chunk {
                        if b == b'\n' {
                            let _ = tx.send((which, String::from_utf8_lossy(&line).into_owned()));
                            line.clear();
                        } else {
                            line.push(b);
                        }
                    }
                }
                if !line.is_empty() {
                    let _ = tx.send((which, String::from_utf8_lossy(&line).into_owned()));
                }
            })
        };
    let out = child.stdout.take().context("stdout")?;
    let err = child.stderr.take().context("stderr")?;
    let t_out = pump(Box::new(out), Stream::Out, tx.clone());
    let t_err = pump(Box::new(err), Stream::Err, tx);
    let mut run = TestRun::default();
    for (which, line) in rx {
        run.line(which, &line);
    }
    let _ = t_out.join();
    let _ = t_err.join();
    let status = child.wait().context("waiting for cargo test")?;
    Ok((status, run))
}

/// What `cargo test`'s output said, as far as the summary needs it.
#[derive(Debug, Default)]
struct TestRun {
    /// The test binary running now: its file stem without cargo's hash
    /// (`direct6`, `xdplb`, `lb_common`), or `xdplb (doc)`.
    binary: String,
    /// Binaries seen, in order.
    binaries: Vec<String>,
    passed: usize,
    ignored: usize,
    /// `binary::test` of every test that failed.
    failed: Vec<String>,
    /// Binaries cargo reported failing (`error: test failed, to rerun
    /// pass …`), with cargo's rerun arguments.
    failed_binaries: Vec<(String, String)>,
}

impl TestRun {
    fn line(&mut self, which: Stream, line: &str) {
        match which {
            Stream::Err => self.stderr_line(line),
            Stream::Out => self.stdout_line(line),
        }
    }

    fn stderr_line(&mut self, line: &str) {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("Running ") {
            // `Running tests/direct6.rs (target/debug/deps/direct6-0123abcd)`
            // or `Running unittests src/lib.rs (target/debug/deps/xdplb-…)`.
            let exe = rest
                .rsplit_once('(')
                .map(|(_, e)| e.trim_end_matches(')'))
                .unwrap_or(rest);
            self.start_binary(binary_stem(exe));
        } else if let Some(krate) = t.strip_prefix("Doc-tests ") {
            self.start_binary(format!("{krate} (doc)"));
        } else if let Some(rest) = t.strip_prefix("error: test failed, to rerun pass ") {
            self.failed_binaries
                .push((self.binary.clone(), rest.trim_matches('`').to_string()));
        }
    }

    fn start_binary(&mut self, name: String) {
        self.binary = name.clone();
        self.binaries.push(name);
    }

    fn stdout_line(&mut self, line: &str) {
        // `test name ... ok`, `test name ... FAILED`, `test name ... ignored`
        // (`ignored, reason`); doc tests' names have spaces.
        let Some(rest) = line.strip_prefix("test ") else {
            return;
        };
        let Some((name, outcome)) = rest.rsplit_once(" ... ") else {
            return;
        };
        let outcome = outcome.trim();
        if outcome == "ok" {
            self.passed += 1;
        } else if outcome == "FAILED" {
            self.failed.push(format!("{}::{name}", self.binary));
        } else if outcome.starts_with("ignored") {
            self.ignored += 1;
        }
    }

    /// Binaries that failed with no failing test of theirs: a crash (a
    /// signal, an abort), or a binary that would not start.
    fn failed_targets_without_test(&self) -> Vec<&(String, String)> {
        self.failed_binaries
            .iter()
            .filter(|(b, _)| !self.failed.iter().any(|f| f.starts_with(&format!("{b}::"))))
            .collect()
    }

    fn failures(&self) -> usize {
        self.failed.len() + self.failed_targets_without_test().len()
    }

    fn summary(&self, skipped: &[(String, String)]) -> String {
        let mut s = format!(
            "{} test binaries: {} passed, {} failed, {} ignored, {} skipped\n",
            self.binaries.len(),
            self.passed,
            self.failed.len(),
            self.ignored,
            skipped.len()
        );
        if !self.failed.is_empty() {
            s.push_str("failed:\n");
            for f in &self.failed {
                s.push_str(&format!("  {f}\n"));
            }
        }
        for (binary, rerun) in self.failed_targets_without_test() {
            s.push_str(&format!(
                "binary {binary} failed without a failing test (crashed? see its output above); rerun: cargo test {rerun}\n"
            ));
        }
        if !skipped.is_empty() {
            let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (test, reason) in skipped {
                by_reason.entry(reason).or_default().push(test);
            }
            s.push_str("skipped (XDPLB_ALLOW_SKIP=1):\n");
            for (reason, tests) in by_reason {
                s.push_str(&format!(
                    "  {} because {reason}: {}\n",
                    tests.len(),
                    tests.join(", ")
                ));
            }
        }
        s
    }
}

/// `target/debug/deps/direct6-0123abcdef` → `direct6`.
fn binary_stem(exe: &str) -> String {
    let file = Path::new(exe)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| exe.to_string());
    match file.rsplit_once('-') {
        Some((stem, hash)) if !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            stem.to_string()
        }
        _ => file,
    }
}

/// The skip log: `(binary::test, reason)` per line.
fn read_skips(path: &PathBuf) -> Result<Vec<(String, String)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.split_once('\t') {
            Some((t, r)) => (t.to_string(), r.to_string()),
            None => (l.to_string(), "no reason given".to_string()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[(Stream, &str)]) -> TestRun {
        let mut r = TestRun::default();
        for (w, l) in lines {
            r.line(*w, l);
        }
        r
    }

    #[test]
    fn failing_tests_are_named_with_their_binary() {
        use Stream::{Err, Out};
        let r = parse(&[
            (Err, "     Running unittests src/lib.rs (target/debug/deps/lb_common-3b1f0c2d4e5a6b7c)"),
            (Out, "running 2 tests"),
            (Out, "test tests::sizes ... ok"),
            (Out, "test tests::slow ... ignored, takes an hour"),
            (Out, "test result: ok. 1 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"),
            (Err, "     Running tests/direct6.rs (target/debug/deps/direct6-0123456789abcdef)"),
            (Out, "test dsr6_scenarios ... FAILED"),
            (Out, "test tunnel6_scenarios ... ok"),
            (Err, "error: test failed, to rerun pass `-p xdplb-tests --test direct6`"),
            (Err, "     Running tests/drain.rs (target/debug/deps/drain-00ff00ff00ff00ff)"),
            (Out, "test drain_keeps_established ... "),
            (Err, "error: test failed, to rerun pass `-p xdplb-tests --test drain`"),
            (Err, "   Doc-tests xdplb"),
            (Out, "test lb-userspace/src/maglev.rs - maglev::build (line 12) ... FAILED"),
        ]);
        assert_eq!(r.passed, 2);
        assert_eq!(r.ignored, 1);
        assert_eq!(
            r.failed,
            [
                "direct6::dsr6_scenarios",
                "xdplb (doc)::lb-userspace/src/maglev.rs - maglev::build (line 12)"
            ]
        );
        let crashed = r.failed_targets_without_test();
        assert_eq!(crashed.len(), 1);
        assert_eq!(crashed[0].0, "drain");
        assert_eq!(r.failures(), 3);
        let s = r.summary(&[
            ("lab_smoke::a".into(), "needs root".into()),
            ("lab_smoke::b".into(), "needs root".into()),
        ]);
        assert!(
            s.starts_with("4 test binaries: 2 passed, 2 failed, 1 ignored, 2 skipped\n"),
            "{s}"
        );
        assert!(s.contains("  direct6::dsr6_scenarios\n"), "{s}");
        assert!(
            s.contains("binary drain failed without a failing test"),
            "{s}"
        );
        assert!(s.contains("-p xdplb-tests --test drain"), "{s}");
        assert!(
            s.contains("  2 because needs root: lab_smoke::a, lab_smoke::b\n"),
            "{s}"
        );
    }

    #[test]
    fn binary_stems() {
        assert_eq!(
            binary_stem("target/debug/deps/direct6-0123456789abcdef"),
            "direct6"
        );
        assert_eq!(binary_stem("target/debug/deps/lab_ipv6-00aa"), "lab_ipv6");
        assert_eq!(binary_stem("/x/deps/xtask"), "xtask");
    }
}
