//! Running the real binary under an address-space cap and measuring what it
//! really used: [`run_capped`] starts `admin-convert` with `RLIMIT_AS` set in
//! the child, reaps it with `wait4` (so the peak RSS is that child's own,
//! not the maximum over every test running in parallel) and kills it after
//! a timeout. Used by the hostile-input tests and the fuzz harness.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Peak RSS every command must stay under on malformed input: 1 GiB plus
/// the size of the valid data it was made from (the bound).
pub const RSS_BOUND_BASE: u64 = 1 << 30;

/// Address-space cap for a child: above the RSS bound (the binary maps its
/// inputs and reserves thread stacks and malloc arenas it never touches),
/// low enough that a runaway allocation aborts instead of swapping.
pub const AS_CAP: u64 = 3 << 30;

/// How a capped run ended.
#[derive(Debug)]
pub struct Capped {
    /// Exit code, or `None` when a signal ended it.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// Peak resident set, bytes (`ru_maxrss` of this child).
    pub peak_rss: u64,
    pub timed_out: bool,
}

impl Capped {
    /// What is wrong with this run for malformed input, if anything: an
    /// exit code other than 0, 1, 2, a signal (abort, OOM), a panic, a
    /// timeout, an error that is not one `error:` line, or a peak RSS above
    /// `rss_bound`.
    pub fn defect(&self, rss_bound: u64) -> Option<String> {
        if self.timed_out {
            return Some("timed out".into());
        }
        if let Some(sig) = self.signal {
            return Some(format!("killed by signal {sig}: {}", self.stderr));
        }
        match self.code {
            Some(0..=2) => {}
            other => return Some(format!("exit code {other:?}: {}", self.stderr)),
        }
        if self.stderr.contains("panicked") {
            return Some(format!("panic: {}", self.stderr));
        }
        if self.code == Some(2) {
            let lines = self.stderr.trim_end().lines().count();
            if lines != 1 || !self.stderr.starts_with("error: ") {
                return Some(format!("not one error line: {}", self.stderr));
            }
        }
        if self.peak_rss > rss_bound {
            return Some(format!(
                "peak RSS {} MiB above the bound {} MiB",
                self.peak_rss >> 20,
                rss_bound >> 20
            ));
        }
        None
    }
}

/// The binary under test: `ADMIN_CONVERT_BIN` when set (`scripts/fuzz.sh`
/// runs a private copy, so rebuilding during a long run changes nothing),
/// else the one cargo built with these tests.
pub fn binary() -> std::path::PathBuf {
    std::env::var_os("ADMIN_CONVERT_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_admin-convert").into())
}

/// Run `admin-convert ARGS` with its address space capped at `as_cap`
/// bytes, killed after `timeout`.
pub fn run_capped(args: &[&str], as_cap: u64, timeout: Duration) -> Capped {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: as_cap as libc::rlim_t,
                rlim_max: as_cap as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("the admin-convert binary starts");
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let mut timed_out = false;
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: plain syscall on our own child; `usage` is written by the kernel.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break (status, usage);
        }
        assert!(r == 0, "wait4 failed: {}", std::io::Error::last_os_error());
        if !timed_out && start.elapsed() > timeout {
            timed_out = true;
            // SAFETY: our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // The child is reaped by wait4; std's handle must not wait on it again.
    std::mem::forget(child);
    let stdout = out_reader.join().expect("reader");
    let stderr = String::from_utf8_lossy(&err_reader.join().expect("reader")).into_owned();
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else {
        (None, Some(libc::WTERMSIG(status)))
    };
    Capped {
        code,
        signal: if timed_out { None } else { signal },
        stdout,
        stderr,
        peak_rss: usage.ru_maxrss as u64 * 1024,
        timed_out,
    }
}
