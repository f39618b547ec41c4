//! Writing outputs: a [`Model`](crate::spec::Model) as a fairseq 0.12 state
//! dict ([`fairseq`]) and safetensors files ([`safetensors`]). Every output
//! is written to a temporary file beside its destination and renamed into
//! place ([`atomic_write`]), so a failed run never leaves half a file.

pub mod fairseq;
pub mod safetensors;

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Write `path` atomically: `fill` writes into a temp file in the same
/// directory, which is synced and renamed over `path` only on success.
pub fn atomic_write(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> Result<()>,
) -> Result<()> {
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
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("{}: sync failed", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("{}: cannot move the output into place", path.display()))?;
    Ok(())
}
