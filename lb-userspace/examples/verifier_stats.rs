//! `cargo run --release --example verifier_stats`: loads the embedded XDP
//! program under a scratch pin path and prints how many instructions the
//! verifier processed to accept it (its complexity budget is 1,000,000;
//! every load, test and restart pays the verification time).
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let pin_path = std::env::temp_dir().join(format!("xdplb-verifier-{}", std::process::id()));
    let pin_path = std::path::PathBuf::from("/sys/fs/bpf").join(pin_path.file_name().unwrap());
    let shape = xdplb::dataplane::Shape {
        pin_path: pin_path.clone(),
        flow_table_size: 1024,
        ring_size: lb_common::limits::DEFAULT_RING_SIZE,
    };
    let started = Instant::now();
    // Tunnel sources of both families, so the tunnel paths are live code
    // (with none, the verifier prunes them as dead).
    let tuning = xdplb::dataplane::Tuning {
        tunnel_source_v4: Some("198.18.1.1".parse()?),
        tunnel_source_v6: Some("2001:2:0:1::1".parse()?),
        ..Default::default()
    };
    let loaded = xdplb::dataplane::Dataplane::load_tuned(shape, tuning);
    let elapsed = started.elapsed();
    let result = loaded
        .map_err(anyhow::Error::from)
        .map(|dp| dp.verified_instructions());
    let _ = std::fs::remove_dir_all(&pin_path);
    println!("loaded in {:.2} s", elapsed.as_secs_f64());
    for (program, count) in result? {
        match count {
            Some(n) => println!("{program}: {n} instructions verified"),
            None => println!("{program}: the kernel does not report verified instructions"),
        }
    }
    Ok(())
}
