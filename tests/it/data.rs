//! Dictionaries and binarized datasets written by fairseq 0.12 and the 0.8
//! Admin fork decode to exactly the BPE'd test corpus they were made from.

use std::path::{Path, PathBuf};

use admin_convert::data::dict::{DictError, BOS, EOS, PAD, UNK};
use admin_convert::data::indexed::{Dtype, Format, IndexedError};
use admin_convert::data::{remove_bpe, BpeMode, Dictionary, IndexedDataset};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

fn corpus_lines(rel: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(rel))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn fixture_dictionary() {
    let d = Dictionary::read(fixture("data-bin/dict.src.txt")).unwrap();
    assert_eq!(d.len(), 144);
    assert_eq!(d.padded_len(8), 144);
    assert_eq!(
        (d.symbol(BOS), d.symbol(PAD), d.symbol(EOS), d.symbol(UNK)),
        ("<s>", "<pad>", "</s>", "<unk>")
    );
    // The first lines of dict.src.txt are "neki 1242", "some 1242", "lo 1227".
    assert_eq!((d.index("neki"), d.index("some"), d.index("lo")), (4, 5, 6));
    assert_eq!(d.count(4), 1242);
    assert_eq!(d.index("no-such-word"), UNK);
    assert_eq!(d.symbol(10_000), "<unk>");
    // Writing it back gives the file fairseq wrote.
    let text = std::fs::read_to_string(fixture("data-bin/dict.src.txt")).unwrap();
    assert_eq!(d.to_dict_txt(), text);
    // And so does a trip through the full symbol table (as stored in model metadata).
    let entries = (0..d.len() as u32).map(|id| (d.symbol(id).to_string(), d.count(id)));
    assert_eq!(Dictionary::from_entries(entries).unwrap(), d);
}

#[test]
fn encode_and_string() {
    let d = Dictionary::read(fixture("data-bin/dict.tgt.txt")).unwrap();
    let ids = d.encode_line("  lo \t zzz-unknown lo\n");
    assert_eq!(ids, vec![d.index("lo"), UNK, d.index("lo"), EOS]);
    assert_eq!(d.string(&ids, None), "lo <unk> lo");
    assert_eq!(d.string_escape_unk(&ids, None), "lo <<unk>> lo");
    let ids = d.encode_line("quie@@ t@@ l@@ y");
    assert_eq!(
        d.string(
            &[PAD, BOS].iter().chain(&ids).copied().collect::<Vec<_>>(),
            Some(BpeMode::SubwordNmt)
        ),
        "quietly"
    );
    assert_eq!(
        remove_bpe("quie@@ t@@ l@@ y", BpeMode::SubwordNmt),
        "quietly"
    );
}

#[test]
fn padding_with_madeupwords() {
    let mut d = Dictionary::from_dict_txt("a 5\nb 3\nc 1\n").unwrap();
    assert_eq!(d.len(), 7);
    assert_eq!(d.padded_len(8), 8);
    assert_eq!(d.padded_len(1), 7);
    assert_eq!(d.padded_len(0), 7);
    d.pad_to_multiple(8);
    assert_eq!(d.len(), 8);
    assert_eq!(d.symbol(7), "madeupword0000");
    assert_eq!(d.to_dict_txt(), "a 5\nb 3\nc 1\nmadeupword0000 0\n");

    // A madeupword already present is skipped, as fairseq's add_symbol does.
    let d = Dictionary::from_dict_txt("madeupword0000 0\na 1\n").unwrap();
    assert_eq!(d.padded_len(4), 8);
}

#[test]
fn dict_txt_rules() {
    // Empty file: just the specials.
    assert_eq!(Dictionary::from_dict_txt("").unwrap().len(), 4);
    // Split at the last space; trailing whitespace and CRLF are ignored.
    let d = Dictionary::from_dict_txt("a b 3\r\nc 2 \n").unwrap();
    assert_eq!((d.index("a b"), d.index("c")), (4, 5));
    // Overwrite flag: the symbol gets a new id, the old slot remains.
    let d =
        Dictionary::from_dict_txt("x 1\ny 2\nx 3 #fairseq:overwrite\n<unk> 0 #fairseq:overwrite\n")
            .unwrap();
    assert_eq!(
        (d.len(), d.index("x"), d.symbol(4), d.index("<unk>")),
        (8, 6, "x", 7)
    );
    assert_eq!(Dictionary::from_dict_txt(&d.to_dict_txt()).unwrap(), d);

    let err = Dictionary::from_dict_txt("a 1\nb 2\na 3\n").unwrap_err();
    assert!(matches!(err, DictError::Duplicate { line: 3, .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "line 3: duplicate symbol \"a\" (fairseq accepts it only with the #fairseq:overwrite flag)"
    );
    let err = Dictionary::from_dict_txt("<s> 1\n").unwrap_err();
    assert!(matches!(err, DictError::Duplicate { line: 1, .. }), "{err}");
    for bad in [
        "a\n",
        "a 1\n\n",
        "a x\n",
        "a 1.5\n",
        "a\t1\n",
        "x #fairseq:overwrite\n",
    ] {
        let err = Dictionary::from_dict_txt(bad).unwrap_err();
        assert!(matches!(err, DictError::Malformed { .. }), "{bad:?}: {err}");
        assert!(!err.to_string().contains('\n'));
    }
    assert!(matches!(
        Dictionary::from_symbols(["<pad>", "<s>", "</s>", "<unk>"]),
        Err(DictError::BadSpecials { .. })
    ));
    assert!(matches!(
        Dictionary::from_symbols(["<s>", "<pad>", "</s>", "<unk>", "a\nb"]),
        Err(DictError::LineBreak { id: 4, .. })
    ));
}

#[test]
fn invalid_utf8_dict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dict.txt");
    std::fs::write(&path, b"a 1\nb\xff 2\n").unwrap();
    assert!(matches!(
        Dictionary::read(&path),
        Err(DictError::NotUtf8 { line: 2 })
    ));
}

/// Every sentence of the binarized test split equals the BPE'd corpus line
/// encoded with the dictionary, and decodes back to it.
fn check_split(data_bin: &str, lang: &str) {
    let dict = Dictionary::read(fixture(&format!("{data_bin}/dict.{lang}.txt"))).unwrap();
    let ds = IndexedDataset::open(fixture(&format!("{data_bin}/test.src-tgt.{lang}"))).unwrap();
    assert_eq!(ds.format(), Format::Mmap);
    assert_eq!(ds.dtype(), Dtype::U16);
    let lines = corpus_lines(&format!("corpus/bpe/test.{lang}"));
    assert_eq!(ds.len(), 200);
    assert_eq!(lines.len(), 200);
    for (i, line) in lines.iter().enumerate() {
        let ids = ds.get(i).unwrap();
        assert_eq!(
            ids,
            dict.encode_line(line),
            "{data_bin} {lang} sentence {i}"
        );
        assert_eq!(ds.size(i), Some(ids.len()));
        assert!(!ids.contains(&UNK));
        assert_eq!(&dict.string(&ids, None), line);
    }
    assert!(matches!(
        ds.get(200),
        Err(IndexedError::IndexOutOfRange {
            index: 200,
            len: 200
        })
    ));
}

#[test]
fn fairseq012_data_bin() {
    check_split("data-bin", "src");
    check_split("data-bin", "tgt");
}

#[test]
fn fairseq08_data_bin() {
    check_split("data-bin-fairseq08", "src");
    check_split("data-bin-fairseq08", "tgt");
}

fn write_pair(dir: &Path, idx: &[u8], bin: &[u8]) -> PathBuf {
    let prefix = dir.join("t.x");
    std::fs::write(dir.join("t.x.idx"), idx).unwrap();
    std::fs::write(dir.join("t.x.bin"), bin).unwrap();
    prefix
}

fn legacy_index(
    code: u64,
    elem: u64,
    dim_offsets: &[i64],
    data_offsets: &[i64],
    sizes: &[i64],
) -> Vec<u8> {
    let mut v = b"TNTIDX\x00\x00".to_vec();
    for x in [
        1,
        code,
        elem,
        data_offsets.len() as u64 - 1,
        sizes.len() as u64,
    ] {
        v.extend(x.to_le_bytes());
    }
    for x in dim_offsets.iter().chain(data_offsets).chain(sizes) {
        v.extend(x.to_le_bytes());
    }
    v
}

#[test]
fn legacy_indexed_dataset() {
    // The layout fairseq's IndexedDatasetBuilder writes (int32 elements).
    let dir = tempfile::tempdir().unwrap();
    let items: [&[i32]; 3] = [&[10, 11, 2], &[2], &[7, 8, 9, 5, 2]];
    let mut bin = Vec::new();
    let (mut dims, mut data, mut sizes) = (vec![0i64], vec![0i64], vec![]);
    for item in items {
        bin.extend(item.iter().flat_map(|x| x.to_le_bytes()));
        sizes.push(item.len() as i64);
        dims.push(sizes.len() as i64);
        data.push(data.last().unwrap() + item.len() as i64);
    }
    let prefix = write_pair(dir.path(), &legacy_index(4, 4, &dims, &data, &sizes), &bin);
    let ds = IndexedDataset::open(&prefix).unwrap();
    assert_eq!(
        (ds.format(), ds.dtype(), ds.len()),
        (Format::Legacy, Dtype::I32, 3)
    );
    for (i, item) in items.iter().enumerate() {
        let want: Vec<u32> = item.iter().map(|&x| x as u32).collect();
        assert_eq!(ds.get(i).unwrap(), want);
    }

    // Truncated .bin, negative token, truncated .idx, bad element size.
    let prefix = write_pair(
        dir.path(),
        &legacy_index(4, 4, &dims, &data, &sizes),
        &bin[..bin.len() - 1],
    );
    assert!(matches!(
        IndexedDataset::open(&prefix),
        Err(IndexedError::OutOfBounds { item: 2, .. })
    ));
    let mut neg = bin.clone();
    neg[..4].copy_from_slice(&(-5i32).to_le_bytes());
    let prefix = write_pair(dir.path(), &legacy_index(4, 4, &dims, &data, &sizes), &neg);
    let ds = IndexedDataset::open(&prefix).unwrap();
    assert!(matches!(
        ds.get(0),
        Err(IndexedError::BadToken { item: 0, .. })
    ));
    let idx = legacy_index(4, 4, &dims, &data, &sizes);
    let prefix = write_pair(dir.path(), &idx[..idx.len() - 3], &bin);
    assert!(matches!(
        IndexedDataset::open(&prefix),
        Err(IndexedError::TruncatedIndex { .. })
    ));
    let prefix = write_pair(dir.path(), &legacy_index(4, 8, &dims, &data, &sizes), &bin);
    assert!(matches!(
        IndexedDataset::open(&prefix),
        Err(IndexedError::ElementSize { .. })
    ));
    let prefix = write_pair(
        dir.path(),
        &legacy_index(4, 4, &[0, 1, 9, 3], &data, &sizes),
        &bin,
    );
    assert!(matches!(
        IndexedDataset::open(&prefix),
        Err(IndexedError::BadItem { item: 1, .. })
    ));
}

#[test]
fn corrupt_mmap_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let idx = std::fs::read(fixture("data-bin/test.src-tgt.src.idx")).unwrap();
    let bin = std::fs::read(fixture("data-bin/test.src-tgt.src.bin")).unwrap();

    // Every truncation of the index or the data is an error, never a panic.
    for cut in [0, 5, 9, 17, 18, 25, 26, 100, idx.len() - 1] {
        let prefix = write_pair(dir.path(), &idx[..cut], &bin);
        let err = IndexedDataset::open(&prefix).unwrap_err();
        assert!(!err.to_string().is_empty());
    }
    for cut in [0, 1, bin.len() / 2, bin.len() - 1] {
        let prefix = write_pair(dir.path(), &idx, &bin[..cut]);
        assert!(matches!(
            IndexedDataset::open(&prefix),
            Err(IndexedError::OutOfBounds { .. })
        ));
    }
    // Wrong version, unknown or float dtype, huge count, negative size, huge pointer.
    let patched = |at: usize, bytes: &[u8]| {
        let mut v = idx.clone();
        v[at..at + bytes.len()].copy_from_slice(bytes);
        v
    };
    let cases: Vec<Vec<u8>> = vec![
        patched(9, &2u64.to_le_bytes()),
        patched(17, &[11]),
        patched(17, &[6]),
        patched(18, &u64::MAX.to_le_bytes()),
        patched(26, &(-1i32).to_le_bytes()),
        patched(26 + 200 * 4, &i64::MAX.to_le_bytes()),
        patched(26 + 200 * 4, &(-8i64).to_le_bytes()),
        b"NOTANIDX".to_vec(),
    ];
    for (i, bad) in cases.iter().enumerate() {
        let prefix = write_pair(dir.path(), bad, &bin);
        assert!(IndexedDataset::open(&prefix).is_err(), "case {i}");
    }
    // A missing file names its kind only; the caller adds the path.
    let err = IndexedDataset::open(dir.path().join("missing")).unwrap_err();
    assert!(err.to_string().starts_with(".idx: "), "{err}");
}
