//! The `admin-convert` binary: parse flags into typed options and call the
//! library. All work lives in the library; errors reach the user as one
//! line on stderr. Exit codes: 0 success, 1 a check failed (e.g. a fold
//! tolerance), 2 bad input or usage.

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
            // `{:#}` joins anyhow's context chain into one line.
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
