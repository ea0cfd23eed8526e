//! Which external programs the tests, demos and benchmarks run, read from
//! their sources, so that a program run there and missing from
//! [`PROGRAMS`] fails a test instead of a fresh machine's first run (as
//! tcpdump once did: installed by hand on CI, never by setup).
//!
//! The sources are parsed (syn) and every place that starts a process is
//! found:
//! - `Command::new(P)` / `Cmd::new(P)` with `P` a string literal, or a
//!   `const` of the same file holding one;
//! - calls of the exec helpers in [`ARGV_HELPERS`] (`lab.exec_ok(ns,
//!   &["nft", …])`, `run_ok(&["dpkg", …])`, …): the first element of their
//!   argv, written inline or bound by a `let` earlier in the function
//!   (`let mut args = vec!["birdc", …]`);
//! - `ip netns exec NS PROG …` spelled in any argument list.
//!
//! A helper nobody told this scan about would hide its programs, so every
//! function that hands one of its own parameters to `Command::new`,
//! `Cmd::new`, `.arg`/`.args` or an exec helper's argv must be listed,
//! either in [`ARGV_HELPERS`] or in [`NOT_ARGV`]; the test fails naming any
//! other.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use syn::visit::{self, Visit};
use syn::{Expr, FnArg, Lit, Pat};

use super::{Step, PROGRAMS};

/// The source trees whose programs setup must install.
const ROOTS: &[&str] = &[
    "tests",
    "lb-userspace/tests",
    "lb-userspace/examples",
    "xtask/src",
];

/// How an exec helper is called.
#[derive(Clone, Copy)]
enum Called {
    /// As a method, from any file (`lab.exec_ok(…)`).
    Method,
    /// As a free function, in the file that defines it.
    InFile(&'static str),
}

/// Functions that run a command line given as a slice: name, how it is
/// called, and the index of the argv argument (`self` not counted). Its
/// first element is the program.
const ARGV_HELPERS: &[(&str, Called, usize)] = &[
    // tests/src/lab.rs: `ip netns exec` / `nsenter --net` into a lab namespace.
    ("exec", Called::Method, 1),
    ("exec_ok", Called::Method, 1),
    ("exec_net", Called::Method, 1),
    ("exec_via", Called::Method, 2),
    ("spawn", Called::Method, 1),
    ("spawn_env", Called::Method, 1),
    ("spawn_net", Called::Method, 1),
    ("spawn_via", Called::Method, 2),
    // `Command::new(args[0]).args(&args[1..])`.
    ("run", Called::InFile("tests/tests/deb.rs"), 0),
    ("run_ok", Called::InFile("tests/tests/deb.rs"), 0),
    // tests/src/operator.rs: a command on the host, failing with its output.
    ("host", Called::InFile("tests/src/operator.rs"), 0),
];

/// Functions that pass a parameter on to a process, but as arguments of a
/// program they fix themselves (listed by file and name), so it names no
/// program. The scan sees that fixed program where it is spelled.
const NOT_ARGV: &[(&str, &str, &str)] = &[
    (
        "xtask/src/cmd.rs",
        "new",
        "Cmd::new itself: its literal callers are scanned",
    ),
    (
        "xtask/src/cmd.rs",
        "args",
        "Cmd::args: arguments of the Cmd's program",
    ),
    ("xtask/src/cmd.rs", "cargo", "arguments of cargo"),
    ("tests/src/lab.rs", "ip", "arguments of ip"),
    (
        "tests/src/lab.rs",
        "command",
        "the lab's namespace entry; its argv comes from exec_via/spawn_via",
    ),
    ("tests/src/lab.rs", "show", "formats an argv for messages"),
    (
        "tests/src/deploy.rs",
        "xdplb",
        "arguments of the xdplb under test",
    ),
    ("tests/src/deploy.rs", "ctl", "arguments of xdplb"),
    (
        "tests/src/operator.rs",
        "start_backend",
        "the lab-backend binary cargo built, in a backend namespace",
    ),
    (
        "xtask/src/deb.rs",
        "upgrade",
        "the xdplb binary cargo built (its man pages and version)",
    ),
    ("tests/src/deploy.rs", "decap", "arguments of xdplb decap"),
    ("tests/src/fleet.rs", "xdplb", "arguments of xdplb"),
    (
        "tests/src/fleet.rs",
        "birdc",
        "a command of birdc (its program is spelled there)",
    ),
    ("lb-userspace/tests/common/mod.rs", "ip", "arguments of ip"),
    (
        "lb-userspace/tests/cli.rs",
        "xdplb",
        "arguments of the xdplb under test",
    ),
    (
        "lb-userspace/tests/cli.rs",
        "spawn",
        "Proc::spawn: arguments of the xdplb under test",
    ),
    ("lb-userspace/tests/cli.rs", "ctl", "arguments of xdplb"),
    (
        "lb-userspace/examples/dataplane_bench.rs",
        "run",
        "arguments of ip",
    ),
    (
        "xtask/src/bench/controller.rs",
        "run",
        "arguments of the controller_bench example",
    ),
    (
        "xtask/src/bench/dataplane.rs",
        "run",
        "arguments of the dataplane_bench example",
    ),
    (
        "xtask/src/bench/lab.rs",
        "run",
        "the lab-bench binary of this repository and its arguments",
    ),
];

/// A program found, and where.
#[derive(Clone, Debug)]
struct Found {
    program: String,
    file: PathBuf,
    line: usize,
}

impl Found {
    /// Programs only benchmarks run may come from `setup --bench`.
    fn bench_only(&self) -> bool {
        let f = self.file.to_string_lossy();
        f.contains("/bench/")
            || f.ends_with("/bench.rs")
            || f.ends_with("lab-bench.rs")
            || f.starts_with("lb-userspace/examples/")
    }
}

/// A function handing a parameter to a process, unlisted.
#[derive(Debug)]
struct Unlisted {
    file: PathBuf,
    function: String,
    line: usize,
}

#[derive(Default)]
struct Scan {
    found: Vec<Found>,
    unlisted: Vec<Unlisted>,
}

/// What a `let` bound: the first element of an argv, if it is a literal.
#[derive(Clone)]
enum Bound {
    Program(String),
    Other,
}

struct FnContext {
    name: String,
    line: usize,
    params: Vec<String>,
    lets: HashMap<String, Bound>,
    passes_param: bool,
}

struct FileVisitor<'a> {
    file: &'a Path,
    consts: HashMap<String, String>,
    scan: &'a mut Scan,
    stack: Vec<FnContext>,
}

fn line_of(span: proc_macro2::Span) -> usize {
    span.start().line
}

/// The string a literal-ish expression holds: `"x"`, `"x".to_string()`,
/// `String::from("x")`, `&"x"`, or a `const` of the file.
fn literal(expr: &Expr, consts: &HashMap<String, String>) -> Option<String> {
    match expr {
        Expr::Lit(l) => match &l.lit {
            Lit::Str(s) => Some(s.value()),
            _ => None,
        },
        Expr::Reference(r) => literal(&r.expr, consts),
        Expr::Paren(p) => literal(&p.expr, consts),
        Expr::MethodCall(m)
            if m.args.is_empty()
                && ["to_string", "to_owned", "into"].contains(&m.method.to_string().as_str()) =>
        {
            literal(&m.receiver, consts)
        }
        Expr::Call(c) if c.args.len() == 1 && path_ends(&c.func, &["String", "from"]) => {
            literal(&c.args[0], consts)
        }
        Expr::Path(p) => p
            .path
            .get_ident()
            .and_then(|i| consts.get(&i.to_string()).cloned()),
        _ => None,
    }
}

fn path_ends(func: &Expr, tail: &[&str]) -> bool {
    let Expr::Path(p) = func else {
        return false;
    };
    let segs: Vec<String> = p
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    segs.len() >= tail.len() && segs[segs.len() - tail.len()..].iter().eq(tail.iter())
}

fn last_segment(func: &Expr) -> Option<String> {
    match func {
        Expr::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

/// The elements of an argv written inline: `[..]`, `&[..]`, `vec![..]`.
fn elements(expr: &Expr) -> Option<Vec<Expr>> {
    match expr {
        Expr::Reference(r) => elements(&r.expr),
        Expr::Paren(p) => elements(&p.expr),
        Expr::Array(a) => Some(a.elems.iter().cloned().collect()),
        Expr::Macro(m) if m.mac.path.is_ident("vec") => macro_exprs(&m.mac),
        _ => None,
    }
}

/// A macro's arguments, when they parse as comma-separated expressions
/// (`vec!`, `assert!`, `ensure!`, `format!`, …).
fn macro_exprs(mac: &syn::Macro) -> Option<Vec<Expr>> {
    mac.parse_body_with(syn::punctuated::Punctuated::<Expr, syn::Token![,]>::parse_terminated)
        .ok()
        .map(|p| p.into_iter().collect())
}

/// The identifier an expression is rooted in (`args`, `&args`,
/// `args[0]`, `args.first()`, `program.as_ref()`, `&args[1..]`).
fn root_ident(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Path(p) => p.path.get_ident().map(|i| i.to_string()),
        Expr::Reference(r) => root_ident(&r.expr),
        Expr::Paren(p) => root_ident(&p.expr),
        Expr::Index(i) => root_ident(&i.expr),
        Expr::MethodCall(m) => root_ident(&m.receiver),
        Expr::Field(f) => root_ident(&f.base),
        _ => None,
    }
}

impl FileVisitor<'_> {
    fn record(&mut self, program: String, line: usize) {
        self.scan.found.push(Found {
            program,
            file: self.file.to_path_buf(),
            line,
        });
    }

    /// What the first element of an argv expression is.
    fn argv_program(&self, argv: &Expr) -> Option<Bound> {
        if let Some(elems) = elements(argv) {
            let first = elems.first()?;
            return Some(match literal(first, &self.consts) {
                Some(p) => Bound::Program(p),
                None => Bound::Other,
            });
        }
        let name = root_ident(argv)?;
        self.stack
            .iter()
            .rev()
            .find_map(|f| f.lets.get(&name))
            .cloned()
    }

    /// Marks the current function as handing a parameter to a process
    /// when `expr` is rooted in one of its parameters.
    fn note_param(&mut self, expr: &Expr) {
        let Some(root) = root_ident(expr) else {
            return;
        };
        if let Some(f) = self.stack.last_mut() {
            if f.params.contains(&root) {
                f.passes_param = true;
            }
        }
    }

    /// `ip netns exec NS PROG …` spelled in an argument list.
    fn netns_exec(&mut self, elems: &[Expr], line: usize) {
        let lits: Vec<Option<String>> = elems.iter().map(|e| literal(e, &self.consts)).collect();
        for i in 0..lits.len() {
            if lits[i].as_deref() == Some("netns")
                && lits.get(i + 1).and_then(|x| x.as_deref()) == Some("exec")
            {
                if let Some(Some(p)) = lits.get(i + 3) {
                    self.record(p.clone(), line);
                }
            }
        }
    }

    fn enter_fn(
        &mut self,
        name: String,
        line: usize,
        inputs: &syn::punctuated::Punctuated<FnArg, syn::Token![,]>,
    ) {
        let params = inputs
            .iter()
            .filter_map(|a| match a {
                FnArg::Typed(t) => match &*t.pat {
                    Pat::Ident(i) => Some(i.ident.to_string()),
                    _ => Some(String::new()),
                },
                FnArg::Receiver(_) => None,
            })
            .collect();
        self.stack.push(FnContext {
            name,
            line,
            params,
            lets: HashMap::new(),
            passes_param: false,
        });
    }

    fn leave_fn(&mut self) {
        let f = self.stack.pop().expect("entered");
        if f.passes_param {
            let file = self.file.to_string_lossy();
            let listed = ARGV_HELPERS.iter().any(|(n, called, _)| {
                *n == f.name
                    && match called {
                        Called::Method => true,
                        Called::InFile(p) => file == *p,
                    }
            }) || NOT_ARGV.iter().any(|(p, n, _)| file == *p && *n == f.name);
            if !listed {
                self.scan.unlisted.push(Unlisted {
                    file: self.file.to_path_buf(),
                    function: f.name,
                    line: f.line,
                });
            }
        }
    }

    /// A call of `name` with `args`, as a method or as a free function.
    fn exec_call(&mut self, name: &str, method: bool, args: &[&Expr], line: usize) {
        let file = self.file.to_string_lossy().into_owned();
        let helper = ARGV_HELPERS.iter().find(|(n, called, _)| {
            *n == name
                && match called {
                    Called::Method => method,
                    Called::InFile(p) => !method && file == *p,
                }
        });
        if let Some((_, _, i)) = helper {
            if let Some(argv) = args.get(*i) {
                if let Some(Bound::Program(p)) = self.argv_program(argv) {
                    self.record(p, line);
                }
                self.note_param(argv);
            }
        }
    }
}

impl<'ast> Visit<'ast> for FileVisitor<'_> {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.enter_fn(
            f.sig.ident.to_string(),
            line_of(f.sig.ident.span()),
            &f.sig.inputs,
        );
        visit::visit_item_fn(self, f);
        self.leave_fn();
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.enter_fn(
            f.sig.ident.to_string(),
            line_of(f.sig.ident.span()),
            &f.sig.inputs,
        );
        visit::visit_impl_item_fn(self, f);
        self.leave_fn();
    }

    fn visit_local(&mut self, l: &'ast syn::Local) {
        if let (Pat::Ident(i), Some(init)) = (&l.pat, &l.init) {
            let bound = self.argv_program(&init.expr);
            if let (Some(b), Some(f)) = (bound, self.stack.last_mut()) {
                f.lets.insert(i.ident.to_string(), b);
            }
        }
        visit::visit_local(self, l);
    }

    fn visit_expr_call(&mut self, c: &'ast syn::ExprCall) {
        let line = line_of(c.paren_token.span.open());
        let args: Vec<&Expr> = c.args.iter().collect();
        if path_ends(&c.func, &["Command", "new"]) || path_ends(&c.func, &["Cmd", "new"]) {
            if let Some(arg) = args.first() {
                if let Some(p) = literal(arg, &self.consts) {
                    self.record(p, line);
                }
                self.note_param(arg);
            }
        } else if let Some(name) = last_segment(&c.func) {
            self.exec_call(&name, false, &args, line);
        }
        visit::visit_expr_call(self, c);
    }

    fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
        let line = line_of(m.method.span());
        let name = m.method.to_string();
        let args: Vec<&Expr> = m.args.iter().collect();
        if name == "arg" || name == "args" {
            if let Some(a) = args.first() {
                self.note_param(a);
            }
        }
        self.exec_call(&name, true, &args, line);
        visit::visit_expr_method_call(self, m);
    }

    fn visit_expr_array(&mut self, a: &'ast syn::ExprArray) {
        let elems: Vec<Expr> = a.elems.iter().cloned().collect();
        self.netns_exec(&elems, line_of(a.bracket_token.span.open()));
        visit::visit_expr_array(self, a);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Macro bodies are opaque to syn: visit those that are expressions.
        if let Some(exprs) = macro_exprs(mac) {
            if mac.path.is_ident("vec") {
                self.netns_exec(&exprs, line_of(mac.bang_token.span));
            }
            for e in &exprs {
                self.visit_expr(e);
            }
        }
        visit::visit_macro(self, mac);
    }
}

/// `const NAME: &str = "…"` anywhere in the file.
fn consts(file: &syn::File) -> HashMap<String, String> {
    struct Consts(HashMap<String, String>);
    impl<'ast> Visit<'ast> for Consts {
        fn visit_item_const(&mut self, c: &'ast syn::ItemConst) {
            if let Some(v) = literal(&c.expr, &HashMap::new()) {
                self.0.insert(c.ident.to_string(), v);
            }
        }
    }
    let mut c = Consts(HashMap::new());
    c.visit_file(file);
    c.0
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn scan_repo(root: &Path) -> Scan {
    let mut scan = Scan::default();
    for r in ROOTS {
        let mut files = Vec::new();
        rust_files(&root.join(r), &mut files);
        assert!(!files.is_empty(), "no sources under {r}");
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            let file = syn::parse_file(&text)
                .unwrap_or_else(|e| panic!("{}: cannot parse: {e}", path.display()));
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let mut v = FileVisitor {
                file: &rel,
                consts: consts(&file),
                scan: &mut scan,
                stack: Vec::new(),
            };
            v.visit_file(&file);
        }
    }
    scan
}

#[test]
fn setup_installs_every_program_the_tests_demos_and_benchmarks_run() {
    let root = crate::cmd::repo_root();
    let scan = scan_repo(&root);
    let found: BTreeSet<&str> = scan.found.iter().map(|f| f.program.as_str()).collect();
    println!("programs run: {found:?}");
    // The scan sees the programs it must see (each run one of the ways
    // above); a scan that found nothing would pass everything.
    for p in [
        "ip",
        "nft",
        "tcpdump",
        "sysctl",
        "ethtool",
        "birdc",
        "chromedriver",
        "curl",
        "dpkg-deb",
        "systemd-analyze",
        "haproxy",
        "apt-get",
    ] {
        assert!(found.contains(p), "the scan no longer finds {p}: {found:?}");
    }
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &scan.found {
        let at = format!("{}:{}", f.file.display(), f.line);
        match PROGRAMS.iter().find(|p| p.name == f.program) {
            None => problems
                .entry(format!(
                    "`{}` is run but not in setup's PROGRAMS",
                    f.program
                ))
                .or_default()
                .push(at),
            Some(p) if p.step == Step::Bench && !f.bench_only() => problems
                .entry(format!(
                    "`{}` is run outside the benchmarks but installed only by `setup --bench`",
                    f.program
                ))
                .or_default()
                .push(at),
            Some(_) => {}
        }
    }
    for u in &scan.unlisted {
        problems
            .entry(format!(
                "`{}` hands a parameter to a process: list it in scan.rs (ARGV_HELPERS if it is a command line, NOT_ARGV if not)",
                u.function
            ))
            .or_default()
            .push(format!("{}:{}", u.file.display(), u.line));
    }
    assert!(
        problems.is_empty(),
        "{}",
        problems
            .iter()
            .map(|(what, at)| format!("{what}: {}", at.join(", ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
