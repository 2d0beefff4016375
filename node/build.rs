//! Embeds an rpath to the libpython the node was built against, so the binary never
//! silently loads another interpreter with the same soname (see STACK.md).
fn main() {
    let config = pyo3_build_config::get();
    if let Some(dir) = config.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
