//! Where outputs go, and what they may never touch: the one policy every
//! command follows.
//!
//! * [`default_output`]: outputs land beside the input (`X.pt` →
//!   `X.folded.safetensors`, `X.onnx/`, `X.ct2/`, `X.hf/`); [`choose`]
//!   refuses an existing default output unless `--force`.
//! * [`format_of`]: the extension decides a file's format, or is refused.
//! * [`check_file`] / [`check_dir`]: an output may not resolve to an input
//!   (same path, symlink or hard link: device + inode compared), nor be
//!   anything but a regular file (device nodes, FIFOs) or a directory.
//! * [`publish_dir`]: a directory output is written into a temporary
//!   directory beside it and renamed into place, so no half-written
//!   directory is ever left behind.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// What a command writes by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `fold`: `X.folded.safetensors`.
    Folded,
    /// `export --onnx`: `X.onnx/`.
    Onnx,
    /// `export --ct2`: `X.ct2/`.
    Ct2,
    /// `export --hf`: `X.hf/`.
    Hf,
}

/// The default output for `input`: beside it, the input's extension
/// replaced (`ckpt.pt` → `ckpt.folded.safetensors`, `ckpt.onnx`, ...).
pub fn default_output(input: &Path, kind: Kind) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let suffix = match kind {
        Kind::Folded => "folded.safetensors",
        Kind::Onnx => "onnx",
        Kind::Ct2 => "ct2",
        Kind::Hf => "hf",
    };
    input.with_file_name(format!("{stem}.{suffix}"))
}

/// `-o` when given, else the default output, which must not exist yet
/// unless `force`.
pub fn choose(output: Option<&Path>, input: &Path, kind: Kind, force: bool) -> Result<PathBuf> {
    if let Some(o) = output {
        return Ok(o.to_path_buf());
    }
    let d = default_output(input, kind);
    if !force && std::fs::symlink_metadata(&d).is_ok() {
        bail!(
            "{}: already exists; give -o PATH to write elsewhere, or --force to replace it",
            d.display()
        );
    }
    Ok(d)
}

/// A model file format, decided by the output's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// `.safetensors`.
    Safetensors,
    /// `.pt`: a fairseq (torch zip) checkpoint.
    FairseqPt,
}

/// The format `path`'s extension asks for; anything else is refused.
pub fn format_of(path: &Path) -> Result<FileFormat> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Ok(FileFormat::Safetensors),
        Some("pt") => Ok(FileFormat::FairseqPt),
        _ => bail!(
            "{}: unknown output format: the name must end in .safetensors or .pt",
            path.display()
        ),
    }
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    false
}

/// True when `out` and `input` are the same file (path, link or hard link).
fn is_same(out: &Path, input: &Path) -> bool {
    if let (Ok(a), Ok(b)) = (std::fs::metadata(out), std::fs::metadata(input)) {
        if same_file(&a, &b) {
            return true;
        }
    }
    match (canonical(out), canonical(input)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The absolute path of `p` (or of its folder joined with its name, when
/// `p` does not exist yet).
fn canonical(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(parent.canonicalize().ok()?.join(p.file_name()?))
}

/// The regular files directly inside `dir` (inputs a directory argument
/// stands for: an export directory, a data directory).
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// Refuse an output file that is one of `inputs` or is not a regular file.
pub fn check_file(out: &Path, inputs: &[&Path]) -> Result<()> {
    for i in inputs {
        if is_same(out, i) {
            bail!(
                "{}: would overwrite an input ({}); choose another -o",
                out.display(),
                i.display()
            );
        }
    }
    if let Ok(m) = std::fs::metadata(out) {
        if !m.is_file() {
            bail!(
                "{}: not a regular file ({}); outputs are only written to regular files",
                out.display(),
                if m.is_dir() {
                    "a directory"
                } else {
                    "a device, FIFO or socket"
                }
            );
        }
    }
    Ok(())
}

/// Refuse an output directory that is not a directory, holds an input, or
/// is not empty (unless `force`).
pub fn check_dir(out: &Path, inputs: &[&Path], force: bool) -> Result<()> {
    let Ok(m) = std::fs::metadata(out) else {
        return Ok(());
    };
    if !m.is_dir() {
        bail!("{}: exists and is not a directory", out.display());
    }
    let dir = canonical(out);
    for i in inputs {
        let inside = canonical(i)
            .zip(dir.as_ref())
            .is_some_and(|(i, d)| i.starts_with(d));
        if inside {
            bail!(
                "{}: holds the input {}; replacing the directory would delete it: choose another -o",
                out.display(),
                i.display()
            );
        }
    }
    let empty = std::fs::read_dir(out)
        .with_context(|| format!("{}: cannot list", out.display()))?
        .next()
        .is_none();
    if !empty && !force {
        bail!(
            "{}: directory is not empty; give -o PATH to write elsewhere, or --force to replace it",
            out.display()
        );
    }
    Ok(())
}

/// Write a directory output: `fill` writes into a temporary directory
/// beside `out`, which then replaces `out` (an old `out` is removed only
/// after the new one is in place). Files get [`super::file_mode`],
/// the directory the usual 0755-under-umask.
pub fn publish_dir<T>(out: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("{}: cannot create the directory", parent.display()))?;
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a usable directory name", out.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempdir_in(&parent)
        .with_context(|| format!("{}: cannot create a temporary directory", parent.display()))?;
    let value = fill(tmp.path())?;
    set_modes(tmp.path())?;
    let old = if out.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(out, &old)
            .with_context(|| format!("{}: cannot move the old directory aside", out.display()))?;
        Some(old)
    } else {
        None
    };
    let tmp_path = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp_path, out) {
        if let Some(old) = &old {
            let _ = std::fs::rename(old, out);
        }
        let _ = std::fs::remove_dir_all(&tmp_path);
        return Err(e)
            .with_context(|| format!("{}: cannot move the output into place", out.display()));
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("{}: cannot remove the replaced directory", old.display()))?;
    }
    Ok(value)
}

fn set_modes(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let file = super::file_mode();
        let set = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("{}: cannot set permissions", p.display()))
        };
        for p in files_in(dir) {
            set(&p, file)?;
        }
        set(dir, file | ((file & 0o444) >> 2))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_sit_beside_the_input() {
        let p = Path::new("runs/checkpoint_best.pt");
        assert_eq!(
            default_output(p, Kind::Folded),
            Path::new("runs/checkpoint_best.folded.safetensors")
        );
        assert_eq!(
            default_output(p, Kind::Onnx),
            Path::new("runs/checkpoint_best.onnx")
        );
        assert_eq!(
            default_output(p, Kind::Ct2),
            Path::new("runs/checkpoint_best.ct2")
        );
        assert_eq!(
            default_output(p, Kind::Hf),
            Path::new("runs/checkpoint_best.hf")
        );
    }

    #[test]
    fn the_extension_decides_the_format() {
        assert_eq!(
            format_of(Path::new("a.safetensors")).unwrap(),
            FileFormat::Safetensors
        );
        assert_eq!(format_of(Path::new("a.pt")).unwrap(), FileFormat::FairseqPt);
        assert!(format_of(Path::new("a.bin")).is_err());
        assert!(format_of(Path::new("a")).is_err());
    }

    #[test]
    fn links_to_an_input_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("in.pt");
        std::fs::write(&input, b"x").unwrap();
        let hard = d.path().join("hard.pt");
        std::fs::hard_link(&input, &hard).unwrap();
        assert!(check_file(&hard, &[&input]).is_err());
        assert!(check_file(&input, &[&input]).is_err());
        #[cfg(unix)]
        {
            let soft = d.path().join("soft.pt");
            std::os::unix::fs::symlink(&input, &soft).unwrap();
            assert!(check_file(&soft, &[&input]).is_err());
        }
        assert!(check_file(&d.path().join("new.pt"), &[&input]).is_ok());
    }

    #[test]
    fn a_failed_directory_write_leaves_the_old_one_and_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("model.onnx");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("old.onnx"), b"old").unwrap();
        let r: Result<()> = publish_dir(&out, |tmp| {
            std::fs::write(tmp.join("encoder.onnx"), b"half")?;
            bail!("disk full")
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(out.join("old.onnx")).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only model.onnx remains");
        publish_dir(&out, |tmp| {
            Ok(std::fs::write(tmp.join("new.onnx"), b"new")?)
        })
        .unwrap();
        assert!(!out.join("old.onnx").exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
