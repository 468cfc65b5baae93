use which::which;

/// Rebuilds the program when bpf-linker changes: `cargo install bpf-linker` after
/// a toolchain update must produce a fresh object.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!(
        "cargo:rerun-if-changed={}",
        bpf_linker.to_str().expect("utf-8 path")
    );
}
