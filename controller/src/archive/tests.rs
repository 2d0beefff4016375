//! Hostile and well-formed archives against [`check`].

use std::io::Write;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::*;

const MANIFEST_TOML: &str = "[app]\nname = \"a\"\nversion = \"1\"\n";

/// How one test entry is written.
enum Kind {
    File,
    Symlink,
    Fifo,
    Dir,
}

fn zip_of(entries: &[(&str, &[u8], Kind)]) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, content, kind) in entries {
        match kind {
            Kind::File => w.start_file(*name, opts).expect("start file"),
            Kind::Fifo => w
                .start_file(*name, opts.external_attributes(0o010_644 << 16))
                .expect("start fifo"),
            Kind::Symlink => {
                let target = std::str::from_utf8(content).expect("utf-8 target");
                w.add_symlink(*name, target, opts).expect("symlink");
                continue;
            }
            Kind::Dir => {
                w.add_directory(*name, opts).expect("dir");
                continue;
            }
        }
        w.write_all(content).expect("write");
    }
    w.finish().expect("finish").into_inner()
}

fn ok_entries() -> Vec<(&'static str, &'static [u8], Kind)> {
    vec![
        ("rebeam.toml", MANIFEST_TOML.as_bytes(), Kind::File),
        ("m.py", b"class Server: pass\n", Kind::File),
    ]
}

fn with(extra: (&'static str, &'static [u8], Kind)) -> Vec<u8> {
    let mut e = ok_entries();
    e.push(extra);
    zip_of(&e)
}

/// Asserts `check` refuses with invalid-argument and a message containing `needle`.
fn refused(code: &[u8], needle: &str) {
    match check(code, MANIFEST_TOML) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains(needle), "{needle:?} not in {m:?}"),
        other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
    }
}

/// Renames every occurrence of `from` to `to` (same length) in an archive's bytes: how a
/// hostile uploader writes what a well-behaved writer refuses to.
fn rename(mut code: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut at = 0;
    while let Some(i) = code[at..].windows(from.len()).position(|w| w == from) {
        code[at + i..at + i + to.len()].copy_from_slice(to);
        at += i + to.len();
    }
    code
}

#[test]
fn a_packed_app_passes() {
    let mut e = ok_entries();
    e.push(("pkg/", b"", Kind::Dir));
    e.push(("pkg/__init__.py", b"", Kind::File));
    check(&zip_of(&e), MANIFEST_TOML).expect("a well-formed archive passes");
}

#[test]
fn not_a_zip() {
    refused(b"certainly not a zip archive", "not a ZIP archive");
}

#[test]
fn unsafe_names() {
    refused(&with(("/etc/cron.d/x", b"", Kind::File)), "absolute paths");
    refused(&with(("C:/x.py", b"", Kind::File)), "absolute paths");
    refused(
        &with(("../../x.py", b"", Kind::File)),
        "'..' is not allowed",
    );
    refused(&with(("a\\b.py", b"", Kind::File)), "backslash");
    refused(&with(("a//b.py", b"", Kind::File)), "empty or '.'");
    refused(&with(("./b.py", b"", Kind::File)), "empty or '.'");
    refused(&with(("a\u{1}.py", b"", Kind::File)), "control characters");
    let long = format!("{}.py", "x".repeat(300));
    let long: &'static str = Box::leak(long.into_boxed_str());
    refused(&with((long, b"", Kind::File)), "path component is over 255");
    refused(&with(("../", b"", Kind::Dir)), "'..' is not allowed");
}

#[test]
fn duplicates_and_clashes() {
    // Written as m.py and n.py, then renamed: a duplicate no honest writer produces.
    let dup = rename(with(("n.py", b"evil = 1\n", Kind::File)), b"n.py", b"m.py");
    refused(&dup, "duplicate entries");
    refused(&with(("M.PY", b"", Kind::File)), "ignore case");
    // `ß` folds to `ss`, as Python's casefold does.
    refused(
        &zip_of(&[
            ("rebeam.toml", MANIFEST_TOML.as_bytes(), Kind::File),
            ("stra\u{df}e.py", b"", Kind::File),
            ("STRASSE.py", b"", Kind::File),
        ]),
        "ignore case",
    );
    // The same letter composed and decomposed.
    refused(
        &zip_of(&[
            ("rebeam.toml", MANIFEST_TOML.as_bytes(), Kind::File),
            ("caf\u{e9}.py", b"", Kind::File),
            ("cafe\u{301}.py", b"", Kind::File),
        ]),
        "ignore case",
    );
    refused(
        &with(("m.py/x.py", b"", Kind::File)),
        "both a file and a folder",
    );
}

#[test]
fn links_and_special_files() {
    refused(
        &with(("link", b"/etc/passwd", Kind::Symlink)),
        "symbolic links are not allowed",
    );
    refused(&with(("pipe", b"", Kind::Fifo)), "not a regular file");
}

#[test]
fn manifest_must_be_the_submitted_one() {
    refused(&zip_of(&ok_entries()[1..]), "no rebeam.toml at its root");
    refused(
        &zip_of(&[
            ("app/rebeam.toml", MANIFEST_TOML.as_bytes(), Kind::File),
            ("m.py", b"", Kind::File),
        ]),
        "no rebeam.toml at its root",
    );
    let other = zip_of(&[(
        "rebeam.toml",
        b"[app]\nname = \"b\"\nversion = \"1\"\n",
        Kind::File,
    )]);
    refused(&other, "differs from the manifest");
}

#[test]
fn too_many_entries() {
    let names: Vec<String> = (0..=MAX_FILES).map(|i| format!("f{i}")).collect();
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    for n in &names {
        w.start_file(n.as_str(), opts).expect("start");
    }
    let code = w.finish().expect("finish").into_inner();
    refused(&code, "10001 entries; the limit is 10000");
}

#[test]
fn sizes_are_bounded_and_not_trusted() {
    // Over the total: zeros compress to almost nothing, a zip bomb's first trick.
    let zeros = vec![0u8; (MAX_UNPACKED_BYTES / 2 + 1) as usize];
    let zeros: &'static [u8] = Box::leak(zeros.into_boxed_slice());
    let mut e = ok_entries();
    e.push(("a.bin", zeros, Kind::File));
    e.push(("b.bin", zeros, Kind::File));
    let bomb = zip_of(&e);
    assert!(bomb.len() < 1 << 20, "compressed to {} bytes", bomb.len());
    refused(&bomb, "unpacks to over 67108864 bytes");

    // A central directory that understates a file's size, its second trick.
    let code = with(("big.bin", &[b'x'; 1000], Kind::File));
    let mut lying = code.clone();
    let mut at = 0;
    loop {
        let i = at
            + lying[at..]
                .windows(4)
                .position(|w| w == b"PK\x01\x02")
                .expect("central entry");
        if &lying[i + 46..i + 53] == b"big.bin" {
            lying[i + 24..i + 28].copy_from_slice(&10u32.to_le_bytes());
            break;
        }
        at = i + 4;
    }
    refused(&lying, "big.bin");
    refused(&lying, "corrupt");
}

#[test]
fn names_mirror_the_client() {
    assert!(names::check("pkg/mod.py").is_ok());
    assert!(names::check("").is_err());
    assert!(names::check(&"a/".repeat(600)).is_err());
}
