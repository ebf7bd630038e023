//! Builds the eBPF programs (leaktrace-ebpf) with the nightly toolchain and
//! bpf-linker, and puts the object in OUT_DIR for `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "leaktrace-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../leaktrace-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}
