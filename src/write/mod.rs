//! Writing outputs: a [`Model`](crate::spec::Model) as a fairseq 0.12 state
//! dict ([`fairseq`]), safetensors files ([`safetensors`]) and torch `.pt`
//! zip files ([`torch`]). Every output
//! is written to a temporary file beside its destination and renamed into
//! place ([`atomic_write`]), so a failed run never leaves half a file.

pub mod ct2;
pub mod fairseq;
pub mod hf;
pub mod output;
pub mod safetensors;
pub mod torch;

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Write `path` atomically: `fill` writes into a temp file in the same
/// directory, which is synced and renamed over `path` only on success.
pub fn atomic_write(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> Result<()>,
) -> Result<()> {
    write_pending(path, fill)?.commit()
}

/// An output written to a temporary file beside its destination but not in
/// place yet: [`Pending::commit`] renames it there, dropping it deletes it.
/// `fold` writes its output before the folded model's self-check (the model
/// can then be freed) and commits only when the check passes.
pub struct Pending {
    path: PathBuf,
    tmp: tempfile::NamedTempFile,
}

/// The first half of [`atomic_write`]: `fill` writes the temp file.
pub fn write_pending(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> Result<()>,
) -> Result<Pending> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".admin-convert-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        fill(&mut w).with_context(|| format!("{}: write failed", path.display()))?;
        w.flush()
            .with_context(|| format!("{}: write failed", path.display()))?;
    }
    Ok(Pending {
        path: path.to_path_buf(),
        tmp,
    })
}

impl Pending {
    /// The temp file, for a last patch before [`Pending::commit`].
    pub fn file(&self) -> &std::fs::File {
        self.tmp.as_file()
    }

    /// Sync the temp file and rename it over the destination.
    pub fn commit(self) -> Result<()> {
        let (path, tmp) = (self.path, self.tmp);
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("{}: sync failed", path.display()))?;
        // Temporary files are created rw------- ; give the output the permissions of
        // the file it replaces, else rw-rw-rw- under the umask (usually rw-r--r--).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or_else(file_mode);
            let _ = tmp
                .as_file()
                .set_permissions(std::fs::Permissions::from_mode(mode));
        }
        tmp.persist(&path)
            .map_err(|e| e.error)
            .with_context(|| format!("{}: cannot move the output into place", path.display()))?;
        Ok(())
    }
}

/// The mode a new file gets: 0666 under the process umask (0644 with the
/// usual umask 022). The umask is read from `/proc/self/status`, else 022.
pub fn file_mode() -> u32 {
    let umask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Umask:"))?;
            u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
        })
        .unwrap_or(0o022);
    0o666 & !umask
}
