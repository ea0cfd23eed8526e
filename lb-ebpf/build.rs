//! Rebuild the eBPF object when bpf-linker changes: the linker is part of
//! the toolchain that produces it, but cargo does not know that.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
