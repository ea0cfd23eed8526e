// The toolchain that builds the eBPF programs, shared by `build.rs`
// (`include!`) and `cargo xtask setup` (which installs it and builds
// bpf-linker against it): one place to change it.

/// The nightly that compiles `lb-ebpf` (`-Z build-std=core` for
/// `bpfel-unknown-none`). A dated nightly, not `nightly`: bpf-linker is
/// built against this toolchain's own libLLVM (22 here, bpf-linker's
/// `llvm-22` feature), and a moving `nightly` would change that LLVM under
/// a bpf-linker built for the old one. Moving it means a nightly whose
/// `rustc -vV` says `LLVM version: 22.*`, or a bpf-linker feature for the
/// new major (`cargo xtask setup` derives the feature and rebuilds).
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
