//! The documents say what the code does: `man 5 xdplb.toml`
//! (`deploy/man/xdplb.toml.5`, shipped in the package) documents every key
//! the shipped and example configs use, each under its own table, and
//! those configs are ones the parser accepts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The configs an operator reads: the packaged one (its pools commented
/// out, read uncommented here) and the examples.
fn configs() -> Vec<PathBuf> {
    let mut v = vec![Path::new(REPO).join("deploy/debian/xdplb.toml")];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(Path::new(REPO).join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    v.extend(examples);
    v
}

/// `# key = value` lines uncommented, so the packaged config's commented
/// pool counts (prose comments do not parse as TOML and are left alone).
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            match t.strip_prefix("# ") {
                Some(rest) if looks_like_toml(rest) => rest.to_string(),
                _ => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn looks_like_toml(line: &str) -> bool {
    let t = line.trim_start();
    let header = t.split('#').next().unwrap_or("").trim_end();
    header.starts_with('[') && header.ends_with(']') && !header.contains(' ')
        || t.split_once(" = ").is_some_and(|(k, _)| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// Every `table.key` (arrays of tables by their header name) in `v`.
fn keys(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(_) if k != "factors" => keys(&path, v, out),
                    toml::Value::Array(a)
                        if a.iter().all(toml::Value::is_table) && !a.is_empty() =>
                    {
                        for item in a {
                            keys(&path, item, out);
                        }
                    }
                    _ => {
                        out.insert(path);
                    }
                }
            }
        }
        _ => unreachable!("keys of a table"),
    }
}

/// The man page's sections (`.SH [pool.health]`) and the keys each
/// documents (`.BR key …` lines under it, every bold word of the line).
fn documented() -> BTreeSet<String> {
    let page = std::fs::read_to_string(Path::new(REPO).join("deploy/man/xdplb.toml.5")).unwrap();
    let mut out = BTreeSet::new();
    let mut section = String::new();
    for line in page.lines() {
        if let Some(s) = line.strip_prefix(".SH ") {
            section = s.trim_matches(|c| c == '[' || c == ']').to_string();
        } else if let Some(rest) = line.strip_prefix(".BR ") {
            // `.BR key " (…)" other " (…)"`: the words outside quotes are bold.
            for (i, part) in rest.split('"').enumerate() {
                if i % 2 == 0 {
                    for word in part.split_whitespace() {
                        out.insert(format!("{section}.{word}"));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn man_5_documents_every_key_of_the_shipped_and_example_configs() {
    let documented = documented();
    assert!(
        documented.contains("dataplane.flow_table_size")
            && documented.contains("pool.backend.role"),
        "the man page parse found {documented:?}"
    );
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for path in configs() {
        let text = uncommented(&std::fs::read_to_string(&path).unwrap());
        // The parser accepts the config as the operator would uncomment it.
        xdplb::config::parse(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let v: toml::Value = toml::from_str(&text).unwrap();
        let mut k = BTreeSet::new();
        keys("", &v, &mut k);
        for key in k {
            if !documented.contains(&key) {
                missing.push(format!("{key} ({})", path.display()));
            }
            used.insert(key);
        }
    }
    assert!(used.len() > 30, "only {} keys found: {used:?}", used.len());
    assert!(
        missing.is_empty(),
        "used in a config but not documented in deploy/man/xdplb.toml.5: {missing:?}"
    );
}

/// `config/xdplb.toml` shows `[pool.load] slow_start_ms = 5000`: that is
/// the pool's ramp, not silently overridden by a pool-level key.
#[test]
fn the_annotated_example_ramps_as_its_load_table_says() {
    let path = Path::new(REPO).join("config/xdplb.toml");
    let cfg = xdplb::config::load(&path).unwrap();
    let pool = &cfg.pools[0];
    let load = pool.load.as_ref().expect("the example has [pool.load]");
    assert_eq!(
        (pool.slow_start_ms, pool.ramp_ms()),
        (None, load.slow_start_ms),
        "{}: the pool's ramp is not its [pool.load] slow_start_ms",
        path.display()
    );
}
