//! Helpers shared by the integration tests: fixture paths and running the
//! real binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// Run `admin-convert ARGS`, returning its output.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_admin-convert"))
        .args(args)
        .output()
        .expect("the admin-convert binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert a failed run: exit code 2, exactly one line on stderr that
/// starts with `error:` and mentions `needle`, and no panic.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

/// `inspect --json` of a fixture, parsed.
pub fn inspect_json(path: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let p = path.to_str().expect("utf-8 path");
    let mut args = vec!["inspect", p, "--json"];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "inspect failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("inspect --json prints JSON")
}
