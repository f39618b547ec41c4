//! fairseq's `Dictionary`: `dict.txt` loading (0.12 rules, `#fairseq:overwrite`
//! included), the implicit specials, `madeupword` padding, `encode_line` and
//! `string`. Semantics in `shared/spec/fairseq.md`, "Dictionary and encoding".

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::text::{py_rstrip, py_split, py_strip, remove_bpe, BpeMode};

/// Id of `<s>` (beginning of sentence; never added by `encode_line`).
pub const BOS: u32 = 0;
/// Id of `<pad>`.
pub const PAD: u32 = 1;
/// Id of `</s>`: appended to every encoded line, and the decoder's first input.
pub const EOS: u32 = 2;
/// Id of `<unk>`: what unknown symbols map to.
pub const UNK: u32 = 3;
/// The implicit symbols at ids 0..4, in order; `dict.txt` entries follow them.
pub const SPECIALS: [&str; 4] = ["<s>", "<pad>", "</s>", "<unk>"];

const OVERWRITE_FLAG: &str = "#fairseq:overwrite";

/// Why a dictionary could not be loaded or built. Messages carry no file
/// name: the caller adds it.
#[derive(Debug, thiserror::Error)]
pub enum DictError {
    #[error("line {line}: expected '<symbol> <count> [#fairseq:overwrite]', got {text:?}")]
    Malformed { line: usize, text: String },
    #[error("line {line}: duplicate symbol {symbol:?} (fairseq accepts it only with the #fairseq:overwrite flag)")]
    Duplicate { line: usize, symbol: String },
    #[error("line {line}: not valid UTF-8")]
    NotUtf8 { line: usize },
    #[error("symbol table must start with <s> <pad> </s> <unk>, found {found:?}")]
    BadSpecials { found: Vec<String> },
    #[error("symbol {id} ({symbol:?}) contains a line break")]
    LineBreak { id: usize, symbol: String },
    #[error("dictionary has {0} symbols, more than 2^32")]
    TooLarge(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A fairseq symbol table: ids index `symbols`; `index` maps a symbol to the
/// id fairseq would use (the last definition when `#fairseq:overwrite` was used).
#[derive(Debug, Clone, PartialEq)]
pub struct Dictionary {
    symbols: Vec<String>,
    counts: Vec<i64>,
    indices: HashMap<String, u32>,
}

impl Default for Dictionary {
    fn default() -> Self {
        Self::new()
    }
}

impl Dictionary {
    /// Only the four implicit specials (what fairseq builds for an empty `dict.txt`).
    pub fn new() -> Self {
        let mut d = Dictionary {
            symbols: Vec::new(),
            counts: Vec::new(),
            indices: HashMap::new(),
        };
        for s in SPECIALS {
            d.push(s, 1);
        }
        d
    }

    /// Reads a `dict.txt` file (see [`Dictionary::from_dict_txt`]).
    pub fn read(path: impl AsRef<Path>) -> Result<Self, DictError> {
        let bytes = std::fs::read(path)?;
        match String::from_utf8(bytes) {
            Ok(text) => Self::from_dict_txt(&text),
            Err(e) => {
                let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
                Err(DictError::NotUtf8 { line })
            }
        }
    }

    /// Parses `dict.txt` text like fairseq 0.12's `Dictionary.add_from_file`:
    /// each line is right-stripped and split at its last space into symbol and
    /// count; a trailing `#fairseq:overwrite` field lets a symbol be redefined
    /// (it then gets a new id); any other repeated symbol is an error.
    pub fn from_dict_txt(text: &str) -> Result<Self, DictError> {
        let mut d = Dictionary::new();
        for (i, raw) in py_lines(text).enumerate() {
            let line = i + 1;
            let malformed = || DictError::Malformed {
                line,
                text: raw.to_string(),
            };
            let (mut word, mut field) = py_rstrip(raw).rsplit_once(' ').ok_or_else(malformed)?;
            let overwrite = field == OVERWRITE_FLAG;
            if overwrite {
                (word, field) = word.rsplit_once(' ').ok_or_else(malformed)?;
            }
            let count = parse_py_int(field).ok_or_else(malformed)?;
            if d.indices.contains_key(word) && !overwrite {
                return Err(DictError::Duplicate {
                    line,
                    symbol: word.to_string(),
                });
            }
            d.push(word, count);
        }
        d.check_size()?;
        Ok(d)
    }

    /// Builds a dictionary from its full symbol table (ids 0..n, specials
    /// included, e.g. as embedded in model metadata), with zero counts.
    pub fn from_symbols<I, S>(symbols: I) -> Result<Self, DictError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::from_entries(symbols.into_iter().map(|s| (s, 0)))
    }

    /// Like [`Dictionary::from_symbols`], with counts. The first four symbols
    /// must be the specials; a repeated symbol redefines it (as
    /// `#fairseq:overwrite` does), so `index` returns its last id.
    pub fn from_entries<I, S>(entries: I) -> Result<Self, DictError>
    where
        I: IntoIterator<Item = (S, i64)>,
        S: Into<String>,
    {
        let entries: Vec<(String, i64)> = entries.into_iter().map(|(s, c)| (s.into(), c)).collect();
        if entries.len() < SPECIALS.len()
            || entries.iter().zip(SPECIALS).any(|((s, _), sp)| s != sp)
        {
            return Err(DictError::BadSpecials {
                found: entries.iter().take(4).map(|(s, _)| s.clone()).collect(),
            });
        }
        let mut d = Dictionary {
            symbols: Vec::with_capacity(entries.len()),
            counts: Vec::with_capacity(entries.len()),
            indices: HashMap::with_capacity(entries.len()),
        };
        for (id, (symbol, count)) in entries.into_iter().enumerate() {
            if symbol.contains(['\n', '\r']) {
                return Err(DictError::LineBreak { id, symbol });
            }
            d.push(&symbol, count);
        }
        d.check_size()?;
        Ok(d)
    }

    /// The `dict.txt` text for this table (entries from id 4 on), one
    /// `<symbol> <count>` per line; redefinitions carry `#fairseq:overwrite`
    /// so that [`Dictionary::from_dict_txt`] gives back the same table.
    pub fn to_dict_txt(&self) -> String {
        let mut seen: HashSet<&str> = SPECIALS.into_iter().collect();
        let mut out = String::new();
        for (symbol, count) in self.symbols.iter().zip(&self.counts).skip(SPECIALS.len()) {
            out.push_str(symbol);
            out.push(' ');
            out.push_str(&count.to_string());
            if !seen.insert(symbol) {
                out.push(' ');
                out.push_str(OVERWRITE_FLAG);
            }
            out.push('\n');
        }
        out
    }

    /// Number of ids (specials and padding included).
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Never true: the specials are always there.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The full symbol table, indexed by id.
    pub fn symbols(&self) -> &[String] {
        &self.symbols
    }

    /// The count stored for `id` (0 when out of range).
    pub fn count(&self, id: u32) -> i64 {
        self.counts.get(id as usize).copied().unwrap_or(0)
    }

    /// Whether `symbol` has an id.
    pub fn contains(&self, symbol: &str) -> bool {
        self.indices.contains_key(symbol)
    }

    /// The id of `symbol`, [`UNK`] when unknown.
    pub fn index(&self, symbol: &str) -> u32 {
        self.indices.get(symbol).copied().unwrap_or(UNK)
    }

    /// The symbol of `id`; `<unk>` when out of range, like fairseq's `__getitem__`.
    pub fn symbol(&self, id: u32) -> &str {
        self.symbols
            .get(id as usize)
            .map_or(SPECIALS[UNK as usize], String::as_str)
    }

    /// fairseq's `add_symbol(symbol)`: the existing id (its count incremented)
    /// or a new id at the end.
    pub fn add_symbol(&mut self, symbol: &str) -> u32 {
        match self.indices.get(symbol) {
            Some(&id) => {
                self.counts[id as usize] += 1;
                id
            }
            None => self.push(symbol, 1),
        }
    }

    /// The length after fairseq's `pad_to_multiple_(multiple)` (no padding for
    /// `multiple <= 1`); fairseq-preprocess pads to a multiple of 8.
    pub fn padded_len(&self, multiple: usize) -> usize {
        let mut len = self.len();
        let mut i = 0;
        while multiple > 1 && !len.is_multiple_of(multiple) {
            if !self.contains(&madeupword(i)) {
                len += 1;
            }
            i += 1;
        }
        len
    }

    /// fairseq's `pad_to_multiple_`: appends `madeupword0000`, `madeupword0001`, …
    /// (count 0) until the length is a multiple of `multiple`.
    pub fn pad_to_multiple(&mut self, multiple: usize) {
        let mut i = 0;
        while multiple > 1 && !self.len().is_multiple_of(multiple) {
            let word = madeupword(i);
            if !self.contains(&word) {
                self.push(&word, 0);
            }
            i += 1;
        }
    }

    /// fairseq's `encode_line(line, add_if_not_exist=False)`: whitespace-split
    /// symbols, unknown → [`UNK`], then [`EOS`]; no BOS.
    pub fn encode_line(&self, line: &str) -> Vec<u32> {
        py_split(line)
            .map(|w| self.index(w))
            .chain(std::iter::once(EOS))
            .collect()
    }

    /// What fairseq-generate prints for a token sequence (`strip_pad` then
    /// `dictionary.string`): pad, EOS and BOS dropped, ids joined by spaces,
    /// then the BPE removed.
    pub fn string(&self, ids: &[u32], bpe: Option<BpeMode>) -> String {
        self.string_impl(ids, bpe, "<unk>")
    }

    /// Like [`Dictionary::string`] with `escape_unk=True`, as fairseq-generate
    /// prints references (`T-` lines): `<unk>` becomes `<<unk>>`.
    pub fn string_escape_unk(&self, ids: &[u32], bpe: Option<BpeMode>) -> String {
        self.string_impl(ids, bpe, "<<unk>>")
    }

    fn string_impl(&self, ids: &[u32], bpe: Option<BpeMode>, unk: &str) -> String {
        let words: Vec<&str> = ids
            .iter()
            .filter(|&&id| !matches!(id, BOS | PAD | EOS))
            .map(|&id| if id == UNK { unk } else { self.symbol(id) })
            .collect();
        let sentence = words.join(" ");
        match bpe {
            Some(mode) => remove_bpe(&sentence, mode),
            None => sentence,
        }
    }

    /// Appends a new entry; `symbol` now indexes it.
    fn push(&mut self, symbol: &str, count: i64) -> u32 {
        let id = self.symbols.len() as u32;
        self.indices.insert(symbol.to_string(), id);
        self.symbols.push(symbol.to_string());
        self.counts.push(count);
        id
    }

    fn check_size(&self) -> Result<(), DictError> {
        if self.symbols.len() > u32::MAX as usize {
            return Err(DictError::TooLarge(self.symbols.len()));
        }
        Ok(())
    }
}

fn madeupword(i: usize) -> String {
    format!("madeupword{i:04}")
}

/// Lines as Python's text mode reads them (universal newlines: `\n`, `\r\n`, `\r`).
fn py_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.find(['\n', '\r']) {
            Some(i) => {
                let line = &rest[..i];
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
                Some(line)
            }
            None => Some(std::mem::take(&mut rest)),
        }
    })
}

/// Python's `int(s)` for ASCII decimal text: surrounding whitespace, an
/// optional sign, and single underscores between digits.
fn parse_py_int(s: &str) -> Option<i64> {
    let s = py_strip(s);
    let (negative, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let value: i64 = digits.replace('_', "").parse().ok()?;
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_lines_universal_newlines() {
        let lines: Vec<_> = py_lines("a 1\r\nb 2\rc 3\nd 4").collect();
        assert_eq!(lines, ["a 1", "b 2", "c 3", "d 4"]);
        assert_eq!(py_lines("a 1\n\n").collect::<Vec<_>>(), ["a 1", ""]);
        assert_eq!(py_lines("").count(), 0);
    }

    #[test]
    fn python_int() {
        assert_eq!(parse_py_int("12"), Some(12));
        assert_eq!(parse_py_int("\t-1_000 "), Some(-1000));
        assert_eq!(parse_py_int("+7"), Some(7));
        for bad in ["", "-", "1__0", "_1", "1_", "1.0", "x"] {
            assert_eq!(parse_py_int(bad), None, "{bad:?}");
        }
    }
}
