//! Builds the XDP program (`lb-ebpf`, target bpfel-unknown-none, the dated
//! nightly of `ebpf_toolchain.rs` with `-Z build-std=core`) and leaves it in
//! OUT_DIR, where `dataplane` embeds it.
use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

include!("ebpf_toolchain.rs");

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .context("workspace root")?
        .join("lb-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../lb-common").display()
    );
    // AYA_BUILD_SKIP=1 (tooling without bpf-linker) leaves no object: write
    // an empty one so the crate still compiles; loading it then fails loudly.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        for object in ["lb-ebpf", "lb-ebpf-explain"] {
            let out = out_dir.join(object);
            if !out.exists() {
                fs::write(&out, [])?;
            }
        }
        return Ok(());
    }
    // aya-build relays every line the inner cargo prints on stderr as a
    // `cargo:warning`, so a clean build showed ~40 `warning: … Compiling …`
    // lines. Quiet that cargo's progress output; its errors (and rustc's
    // diagnostics, which come through its JSON messages) still show, and
    // still fail the build. The build script runs single-threaded, and the
    // variable only reaches the cargo it spawns.
    env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .with_context(|| {
        format!("building lb-ebpf with {EBPF_TOOLCHAIN} (`cargo xtask setup` installs it and bpf-linker)")
    })
}
