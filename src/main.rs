//! The `admin-convert` binary: parse flags into typed options and call the
//! library. All work lives in the library; errors reach the user as one
//! line on stderr ([`one_line`]). Exit codes: 0 success, 1 a check failed
//! (e.g. a fold tolerance), 2 bad input or usage.

use admin_convert::cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            // A closed pipe (`| head`) is the reader's choice, not an error.
            let broken_pipe = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", one_line(&causes));
            ExitCode::from(2)
        }
    }
}

/// Longest run of non-space characters kept whole (a path, a token).
const MAX_WORD: usize = 160;
/// Longest message printed.
const MAX_MESSAGE: usize = 1000;

/// anyhow's context chain joined with `: ` as `{:#}` does, except that a
/// cause already spelled out by the message before it (an OS error wrapped
/// by `thiserror`'s `#[from]`) is not repeated; then made one printable
/// line: control characters escaped, very long words and the whole message
/// shortened in the middle.
fn one_line(causes: &[String]) -> String {
    let mut msg = String::new();
    for c in causes {
        if msg.contains(c.as_str()) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(c);
    }
    let escaped: String = msg
        .chars()
        .flat_map(|c| {
            let s: String = if c.is_control() || c == '\u{fffd}' {
                c.escape_default().collect()
            } else {
                c.to_string()
            };
            s.chars().collect::<Vec<_>>()
        })
        .collect();
    let words: Vec<String> = escaped.split(' ').map(|w| shorten(w, MAX_WORD)).collect();
    shorten(&words.join(" "), MAX_MESSAGE)
}

/// `s` itself, or its start and end around `…` when over `max` characters.
fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max * 2 / 3).collect();
    let tail: String = s.chars().skip(n - max / 3).collect();
    format!("{head}…{tail}")
}
