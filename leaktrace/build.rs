//! Builds the eBPF programs (leaktrace-ebpf) with the nightly toolchain and
//! bpf-linker, and puts the object in OUT_DIR for `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "leaktrace-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../leaktrace-ebpf"),
        ..Default::default()
    };
    // The programs are built from leaktrace-common too: aya-build watches
    // only leaktrace-ebpf, and a change to the shared types must rebuild them.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../leaktrace-common")
    );
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}
