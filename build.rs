//! Compiles `plans.toml` into Rust data (`$OUT_DIR/catalog.rs`) and records the git
//! commit for `/health`. An invalid catalog fails the build with a clear message.

#[path = "src/domain/catalog_source.rs"]
mod catalog_source;

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=plans.toml");
    println!("cargo:rerun-if-changed=src/domain/catalog_source.rs");
    println!("cargo:rerun-if-env-changed=PLANGATE_GIT_COMMIT");

    let text = std::fs::read_to_string("plans.toml").unwrap_or_else(|e| {
        eprintln!("error: cannot read plans.toml: {e}");
        std::process::exit(1)
    });
    let catalog = match catalog_source::parse_catalog(&text) {
        Ok(t) => t,
        Err(e) => {
            // cargo prints a build script's stderr when it fails.
            eprintln!("error: plans.toml: {e}");
            std::process::exit(1)
        }
    };
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let path = std::path::Path::new(&out).join("catalog.rs");
    std::fs::write(&path, catalog_source::to_rust(&catalog)).expect("write catalog.rs");

    // Rebuild when HEAD moves so /health reports the commit that was built.
    for f in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
    let commit = std::env::var("PLANGATE_GIT_COMMIT").ok().filter(|s| !s.is_empty()).or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    });
    let commit = commit.unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=PLANGATE_GIT_COMMIT={commit}");
}
