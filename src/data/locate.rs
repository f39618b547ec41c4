//! Finding a test set and its dictionaries: the one route every command
//! (`fold`, `export`, `eval`, `score`, `translate`) takes.
//!
//! * **The language pair** comes from `--source-lang/--target-lang`
//!   (fairseq's flags), else from the split's file names
//!   (`SUBSET.SRC-TGT.SRC.idx` binarized, `SUBSET.SRC-TGT.SRC` raw text),
//!   else from fairseq's fixed names `dict.src.txt`/`dict.tgt.txt`, else a
//!   single `dict.X.txt` (a joined dictionary). Never alphabetical order:
//!   `dict.en.txt` and `dict.de.txt` with nothing else to tell is an error
//!   that asks for `--source-lang`.
//! * **The data directory** of `eval`/`score` comes from, in order, a
//!   positional argument or `--data`, the directory recorded in the
//!   checkpoint (`args.data` / `cfg.task.data`, resolved against the working
//!   directory and then the checkpoint's folder), then an export directory's
//!   own dictionaries ([`find_data_dir`]).
//! * **Dictionaries must fit the model**: [`check_vocab`] compares them with
//!   the embedding tables; every command calls it.

use crate::data::{Dictionary, IndexedDataset};
use crate::read::{mapping, Checkpoint};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// What the user said about the language pair and split.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub source_lang: Option<String>,
    pub target_lang: Option<String>,
    /// The split (`test`, `valid`, ...).
    pub subset: String,
}

impl Query {
    /// A query for `subset` with optional languages (both or neither).
    pub fn new(source: Option<&str>, target: Option<&str>, subset: &str) -> Result<Query> {
        if source.is_some() != target.is_some() {
            bail!("give both --source-lang and --target-lang, or neither");
        }
        Ok(Query {
            source_lang: source.map(str::to_string),
            target_lang: target.map(str::to_string),
            subset: subset.to_string(),
        })
    }

    fn langs(&self) -> Option<(&str, &str)> {
        Some((self.source_lang.as_deref()?, self.target_lang.as_deref()?))
    }
}

/// A source and a target dictionary, with their text (for embedding in
/// outputs) and where they came from.
#[derive(Clone, Debug)]
pub struct Dicts {
    pub src: Dictionary,
    pub tgt: Dictionary,
    pub src_text: String,
    pub tgt_text: String,
    /// Files or metadata they were read from, for messages.
    pub origin: String,
}

impl Dicts {
    /// Parse two `dict.txt` texts; `origin` names them in errors.
    pub fn from_texts(src_text: String, tgt_text: String, origin: &str) -> Result<Dicts> {
        let src = Dictionary::from_dict_txt(&src_text)
            .with_context(|| format!("{origin}: source dictionary"))?;
        let tgt = Dictionary::from_dict_txt(&tgt_text)
            .with_context(|| format!("{origin}: target dictionary"))?;
        Ok(Dicts {
            src,
            tgt,
            src_text,
            tgt_text,
            origin: origin.to_string(),
        })
    }

    /// The pair as `(source, target)` dictionaries.
    pub fn pair(self) -> (Dictionary, Dictionary) {
        (self.src, self.tgt)
    }
}

fn names_in(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list the directory", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// The language pair of split `subset` from its file names: binarized
/// `SUBSET.A-B.A.idx` or raw text `SUBSET.A-B.A`. `None` when absent; an
/// error when two different pairs are present.
pub fn split_pair(dir: &Path, subset: &str) -> Result<Option<(String, String)>> {
    let names = names_in(dir)?;
    let mut pairs: Vec<(String, String)> = vec![];
    for n in &names {
        let Some(rest) = n.strip_prefix(subset).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        let rest = rest.strip_suffix(".idx").unwrap_or(rest);
        let Some((pair, lang)) = rest.split_once('.') else {
            continue;
        };
        let Some((a, b)) = pair.split_once('-') else {
            continue;
        };
        if lang == a && !a.is_empty() && !b.is_empty() && !lang.contains('.') {
            let p = (a.to_string(), b.to_string());
            if !pairs.contains(&p) {
                pairs.push(p);
            }
        }
    }
    match pairs.len() {
        0 => Ok(None),
        1 => Ok(pairs.pop()),
        _ => bail!(
            "{}: split '{subset}' exists for several language pairs ({}): give --source-lang and --target-lang",
            dir.display(),
            pairs
                .iter()
                .map(|(a, b)| format!("{a}-{b}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The dictionary files of `dir` for `q` (see the module doc for the order).
pub fn dict_paths(dir: &Path, q: &Query) -> Result<(PathBuf, PathBuf)> {
    let file = |lang: &str| dir.join(format!("dict.{lang}.txt"));
    let pair = match q.langs() {
        Some((s, t)) => Some((s.to_string(), t.to_string())),
        None => split_pair(dir, &q.subset)?,
    };
    if let Some((s, t)) = pair {
        for (lang, p) in [(&s, file(&s)), (&t, file(&t))] {
            ensure!(
                p.is_file(),
                "{}: no dictionary for language '{lang}' (dict.{lang}.txt)",
                dir.display()
            );
        }
        return Ok((file(&s), file(&t)));
    }
    if file("src").is_file() && file("tgt").is_file() {
        return Ok((file("src"), file("tgt")));
    }
    let found: Vec<String> = names_in(dir)?
        .into_iter()
        .filter(|n| n.starts_with("dict.") && n.ends_with(".txt") && n.len() > 9)
        .collect();
    match found.as_slice() {
        [] => bail!(
            "{}: no dictionaries (dict.SRC.txt and dict.TGT.txt); give --dict-dir",
            dir.display()
        ),
        [one] => Ok((dir.join(one), dir.join(one))),
        _ => bail!(
            "{}: cannot tell the source dictionary from the target one ({}): give --source-lang and --target-lang",
            dir.display(),
            found.join(", ")
        ),
    }
}

/// Read the dictionaries of `dir` for `q`.
pub fn dicts_in(dir: &Path, q: &Query) -> Result<Dicts> {
    let (s, t) = dict_paths(dir, q)?;
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))
    };
    let origin = if s == t {
        s.display().to_string()
    } else {
        format!(
            "{} + {}",
            s.display(),
            t.file_name().unwrap_or_default().to_string_lossy()
        )
    };
    let d = Dicts::from_texts(read(&s)?, read(&t)?, &origin)?;
    Ok(d)
}

/// Dictionaries stored in a checkpoint's metadata (written by `fold`).
pub fn embedded_dicts(ckpt: &Checkpoint) -> Result<Option<Dicts>> {
    match ckpt.embedded_dicts() {
        Some((s, t)) => Ok(Some(Dicts::from_texts(
            s.to_string(),
            t.to_string(),
            &format!("{} (embedded dictionaries)", ckpt.path.display()),
        )?)),
        None => Ok(None),
    }
}

/// Refuse dictionaries that do not match the model's embedding tables.
pub fn check_vocab(dicts: &Dicts, src_rows: usize, tgt_rows: usize, model: &Path) -> Result<()> {
    for (dict, rows, side) in [
        (&dicts.src, src_rows, "source"),
        (&dicts.tgt, tgt_rows, "target"),
    ] {
        ensure!(
            dict.len() == rows,
            "{}: the {side} dictionary ({}) has {} entries but the model's {side} embedding has {rows} rows: wrong dictionary? (give --dict-dir or --source-lang/--target-lang)",
            model.display(),
            dicts.origin,
            dict.len()
        );
    }
    Ok(())
}

/// Source and (when present) target token ids of split `q.subset` in `dir`,
/// each sentence ending in EOS.
pub struct Split {
    pub src: Vec<Vec<u32>>,
    pub tgt: Option<Vec<Vec<u32>>>,
}

fn idx_exists(prefix: &Path) -> bool {
    let mut p = prefix.as_os_str().to_owned();
    p.push(".idx");
    Path::new(&p).is_file()
}

/// Read the binarized split of `dir` (pair as in [`dict_paths`]).
pub fn read_split(dir: &Path, q: &Query) -> Result<Split> {
    let (s, t) = match q.langs() {
        Some((s, t)) => (s.to_string(), t.to_string()),
        None => split_pair(dir, &q.subset)?.with_context(|| {
            format!(
                "{}: no binarized '{}' split ({}.SRC-TGT.SRC.idx); give --subset, or --source-lang/--target-lang",
                dir.display(),
                q.subset,
                q.subset
            )
        })?,
    };
    let prefix = |lang: &str| -> PathBuf {
        let fwd = dir.join(format!("{}.{s}-{t}.{lang}", q.subset));
        if idx_exists(&fwd) {
            fwd
        } else {
            dir.join(format!("{}.{t}-{s}.{lang}", q.subset))
        }
    };
    let read = |p: &Path| -> Result<Vec<Vec<u32>>> {
        let ds = IndexedDataset::open(p).with_context(|| format!("{}.{{idx,bin}}", p.display()))?;
        ds.iter()
            .map(|r| r.with_context(|| format!("{}.bin", p.display())))
            .collect()
    };
    let src = read(&prefix(&s))?;
    let tgt = if idx_exists(&prefix(&t)) {
        let r = read(&prefix(&t))?;
        ensure!(
            r.len() == src.len(),
            "{}: {} sources but {} targets",
            dir.display(),
            src.len(),
            r.len()
        );
        Some(r)
    } else {
        None
    };
    Ok(Split { src, tgt })
}

/// The data directory a checkpoint records (`args.data` or
/// `cfg.task.data`, the latter first; the first of a colon-separated list).
pub fn recorded_data(ckpt: &Checkpoint) -> Option<String> {
    let from_args = ckpt
        .hparams
        .get("data")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let from_cfg = || {
        let root = mapping(ckpt.torch_root()?)?;
        let get = |m: &Vec<(crate::read::pickle::Value, crate::read::pickle::Value)>, k: &str| {
            m.iter()
                .find(|(key, _)| key.as_str() == Some(k))
                .map(|(_, v)| v.clone())
        };
        let cfg = get(root, "cfg")?.unwrap_omegaconf();
        let task = get(mapping(&cfg)?, "task")?;
        let data = get(mapping(&task)?, "data")?;
        data.as_str().map(str::to_string)
    };
    // cfg.task.data first: a 0.12 `cfg.model` namespace may carry a stale copy.
    let d = from_cfg().or(from_args)?;
    let first = d.split(':').next().unwrap_or("").to_string();
    (!first.is_empty()).then_some(first)
}

/// The data directory `ckpt` records, if it exists and holds split
/// `q.subset` (or `q` names the languages): tried as given (against the
/// working directory), then against the checkpoint's folder. Else the
/// places looked at.
pub fn recorded_dir(ckpt: &Checkpoint, q: &Query) -> std::result::Result<PathBuf, Vec<String>> {
    let Some(rec) = recorded_data(ckpt) else {
        return Err(vec![format!(
            "{}: records no data directory",
            ckpt.path.display()
        )]);
    };
    let rec = PathBuf::from(rec);
    let folder = match ckpt.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut candidates = vec![rec.clone()];
    if rec.is_relative() {
        candidates.push(folder.join(&rec));
    }
    let mut looked = vec![];
    for c in candidates {
        let holds = c.is_dir()
            && (q.langs().is_some() || split_pair(&c, &q.subset).ok().flatten().is_some());
        if holds {
            return Ok(c);
        }
        looked.push(c.display().to_string());
    }
    Err(looked)
}

/// The file in an export directory that records the data directory of the
/// checkpoint it was exported from (absolute path, one line).
pub const EXPORT_DATA_FILE: &str = "data-dir.txt";

/// The data directory an export directory records ([`EXPORT_DATA_FILE`]).
pub fn export_records(dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(dir.join(EXPORT_DATA_FILE)).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| PathBuf::from(line))
}

/// Where `eval`/`score` look for a test set when none was given.
#[derive(Debug)]
pub enum DataSource {
    /// A data directory (binarized split + dictionaries).
    Dir(PathBuf),
    /// No test set found; the message says what was looked for where.
    None(String),
}

/// The data directory: `given` (positional or `--data`), else the one the
/// checkpoint at `model` records ([`recorded_dir`]), else the one an export
/// directory records ([`export_records`]).
pub fn find_data_dir(given: Option<&Path>, model: &Path, q: &Query) -> Result<DataSource> {
    if let Some(d) = given {
        ensure!(d.is_dir(), "{}: not a data directory", d.display());
        return Ok(DataSource::Dir(d.to_path_buf()));
    }
    let mut looked = vec![];
    if model.is_file() {
        let ckpt = Checkpoint::open(model)?;
        match recorded_dir(&ckpt, q) {
            Ok(d) => return Ok(DataSource::Dir(d)),
            Err(l) => looked = l,
        }
    } else if model.is_dir() {
        if let Some(d) = export_records(model) {
            if d.is_dir() {
                return Ok(DataSource::Dir(d));
            }
            looked.push(d.display().to_string());
        }
    }
    Ok(DataSource::None(if looked.is_empty() {
        format!(
            "{}: no test set given: pass a data directory (`admin-convert eval MODEL DATA`), --data DIR, or --src FILE",
            model.display()
        )
    } else {
        format!(
            "no '{}' split found (looked for the data directory the model records: {}): pass a data directory (`admin-convert eval MODEL DATA`), --data DIR, or --src FILE",
            q.subset,
            looked.join(", ")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for f in files {
            std::fs::write(d.path().join(f), "a 1\n").expect("write");
        }
        d
    }

    fn q(s: Option<&str>, t: Option<&str>) -> Query {
        Query::new(s, t, "test").expect("query")
    }

    fn names(p: (PathBuf, PathBuf)) -> (String, String) {
        let n = |p: PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
        (n(p.0), n(p.1))
    }

    #[test]
    fn two_language_dicts_without_a_hint_are_refused() {
        let d = dir_with(&["dict.en.txt", "dict.de.txt"]);
        let e = dict_paths(d.path(), &q(None, None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--source-lang"), "{e}");
    }

    #[test]
    fn the_split_names_the_pair_never_alphabetical_order() {
        let d = dir_with(&[
            "dict.en.txt",
            "dict.de.txt",
            "test.en-de.en.idx",
            "test.en-de.de.idx",
        ]);
        let p = names(dict_paths(d.path(), &q(None, None)).unwrap());
        assert_eq!(p, ("dict.en.txt".into(), "dict.de.txt".into()));
        let p = names(dict_paths(d.path(), &q(Some("de"), Some("en"))).unwrap());
        assert_eq!(p, ("dict.de.txt".into(), "dict.en.txt".into()));
    }

    #[test]
    fn src_tgt_names_and_a_joined_dict() {
        let d = dir_with(&["dict.src.txt", "dict.tgt.txt"]);
        let p = names(dict_paths(d.path(), &q(None, None)).unwrap());
        assert_eq!(p, ("dict.src.txt".into(), "dict.tgt.txt".into()));
        let d = dir_with(&["dict.en.txt"]);
        let p = names(dict_paths(d.path(), &q(None, None)).unwrap());
        assert_eq!(p, ("dict.en.txt".into(), "dict.en.txt".into()));
    }

    #[test]
    fn a_missing_language_is_named() {
        let d = dir_with(&["dict.en.txt", "dict.de.txt"]);
        let e = dict_paths(d.path(), &q(Some("en"), Some("fr")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("dict.fr.txt"), "{e}");
        assert!(Query::new(Some("en"), None, "test").is_err());
    }
}
