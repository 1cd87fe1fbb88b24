//! Link settings for the Python extension; libtorch itself is found by torch-sys
//! (LIBTORCH_USE_PYTORCH=1, with the project venv active).
use std::path::PathBuf;
use std::process::Command;

fn torch_lib_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(dir).join("lib"));
    }
    // Same interpreter choice as torch-sys: `python` inside a venv, `python3` otherwise.
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
    let out = Command::new(python)
        .args(["-c", "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    // The extension lives in site-packages/tidewatch/; torch's libraries in site-packages/torch/lib.
    // This rpath lets `import tidewatch` work without importing torch first.
    println!("cargo:rustc-link-arg-cdylib=-Wl,-rpath,$ORIGIN/../torch/lib");
    if let Some(lib) = torch_lib_dir() {
        // --as-needed would drop libtorch_cuda.so (nothing references it by symbol) and CUDA
        // would then be silently unavailable on GPU machines.
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg-cdylib=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg-cdylib=-ltorch_cuda");
            println!("cargo:rustc-link-arg-cdylib=-Wl,--as-needed");
        }
    }
}
