//! Checks an app's code archive before anything is proposed: the controller never trusts the
//! client, and a node must never be handed an archive it would refuse to unpack.
//!
//! The rules and limits are the client's (`client-py/rebeam/client/archive.py`: `check_name`,
//! `_checked_entries`, `unpack`), so whatever `rebeam.client.pack` builds passes here and
//! whatever passes here unpacks on a node.

mod names;
#[cfg(test)]
mod tests;

use std::io::{Cursor, Read};

use zip::{CompressionMethod, System, ZipArchive};

use crate::error::{Error, Result};
use names::NameSet;

/// Most entries in one archive.
pub const MAX_FILES: usize = 10_000;
/// Largest archive nodes unpack (the client's `DEFAULT_MAX_BYTES`, which nodes use): the
/// controller refuses larger uploads at submit, so an app it accepts can run.
pub const MAX_CODE_BYTES: usize = 8 * 1024 * 1024;
/// Most bytes the files of one archive may take once unpacked.
pub const MAX_UNPACKED_BYTES: u64 = 64 * 1024 * 1024;
/// The manifest's name at the archive root.
pub const MANIFEST: &str = "rebeam.toml";

/// Unix file-type bits of a mode, and the types an entry may have.
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// One file entry that passed the metadata checks.
struct FileEntry {
    index: usize,
    name: String,
    declared: u64,
}

/// Refuses `code` unless it is an app archive a node can safely unpack whose root
/// `rebeam.toml` is exactly `manifest_toml`. Reads every entry (bounded), so run it off the
/// async runtime.
pub fn check(code: &[u8], manifest_toml: &str) -> Result<()> {
    let mut zip = ZipArchive::new(Cursor::new(code)).map_err(|e| {
        Error::invalid(format!(
            "the code is not a ZIP archive ({e}); pack it with rebeam.client.pack"
        ))
    })?;
    if zip.len() > MAX_FILES {
        return Err(Error::invalid(format!(
            "the archive has {} entries; the limit is {MAX_FILES}",
            zip.len()
        )));
    }
    // The reader keeps one entry per name, so an exact duplicate is only visible here.
    if zip.has_duplicate_names() {
        return Err(Error::invalid(
            "the archive has duplicate entries (two with the same name); pack it with rebeam.client.pack",
        ));
    }
    let files = checked_entries(&zip)?;
    let mut manifest = None;
    for f in &files {
        // Only a manifest of the submitted length can be equal to it: keep no other bytes.
        let keep = f.name == MANIFEST && f.declared == manifest_toml.len() as u64;
        let bytes = read_entry(&mut zip, f, keep)?;
        if f.name == MANIFEST {
            manifest = Some(bytes);
        }
    }
    match manifest {
        None => Err(Error::invalid(format!(
            "the archive has no {MANIFEST} at its root; pack the app directory that holds it"
        ))),
        Some(m) if m != manifest_toml.as_bytes() => Err(Error::invalid(format!(
            "the archive's {MANIFEST} differs from the manifest sent with it; send the archive's own {MANIFEST} (rebeam.client.pack does)"
        ))),
        Some(_) => Ok(()),
    }
}

/// The client's `_checked_entries`: every entry's type, encryption, compression and name, and
/// the declared total size; returns the file entries (folders are implied by file names).
fn checked_entries(zip: &ZipArchive<Cursor<&[u8]>>) -> Result<Vec<FileEntry>> {
    let mut seen = NameSet::default();
    let mut files = Vec::new();
    let mut declared = 0u64;
    for index in 0..zip.len() {
        let e = zip.by_index_data(index).map_err(|e| {
            Error::invalid(format!(
                "entry {index} cannot be read ({e}); the archive is corrupt"
            ))
        })?;
        let name = e
            .name()
            .map_err(|_| {
                Error::invalid(format!(
                    "entry {index}: the name is not valid UTF-8; rename the file"
                ))
            })?
            .into_owned();
        let is_dir = name.ends_with('/');
        if e.system() == System::Unix {
            let kind = (e.external_attributes() >> 16) & S_IFMT;
            if kind == S_IFLNK {
                return Err(Error::invalid(format!(
                    "{name:?}: symbolic links are not allowed in an archive"
                )));
            }
            // Zero means "no type recorded", which writers use for plain files.
            let expected = if is_dir { S_IFDIR } else { S_IFREG };
            if kind != 0 && kind != expected {
                return Err(Error::invalid(format!(
                    "{name:?}: not a regular file (a device, socket or pipe); remove it from the app"
                )));
            }
        }
        if e.encrypted() {
            return Err(Error::invalid(format!(
                "{name:?}: encrypted entries are not allowed"
            )));
        }
        match e.compression() {
            CompressionMethod::Stored | CompressionMethod::Deflated => {}
            other => {
                return Err(Error::invalid(format!(
                    "{name:?}: compression method {other:?} is not supported; use deflate"
                )));
            }
        }
        if let Some(folder) = name.strip_suffix('/').filter(|_| is_dir) {
            names::check(folder)?;
            continue;
        }
        names::check(&name)?;
        seen.add(&name)?;
        declared = declared.saturating_add(e.size());
        if declared > MAX_UNPACKED_BYTES {
            return Err(Error::invalid(format!(
                "the archive unpacks to over {MAX_UNPACKED_BYTES} bytes; leave data files out of the app"
            )));
        }
        files.push(FileEntry {
            index,
            name,
            declared: e.size(),
        });
    }
    Ok(files)
}

/// Decompresses one entry without trusting its declared size (a zip bomb's trick): at most one
/// byte past what it declares is ever produced, and the declared sizes were summed and bounded
/// already. Keeps the bytes only when asked.
fn read_entry(zip: &mut ZipArchive<Cursor<&[u8]>>, f: &FileEntry, keep: bool) -> Result<Vec<u8>> {
    let corrupt = |e: &dyn std::fmt::Display| {
        Error::invalid(format!(
            "{:?}: the archive is corrupt ({e}); pack it again with rebeam.client.pack",
            f.name
        ))
    };
    let entry = zip.by_index(f.index).map_err(|e| corrupt(&e))?;
    let mut limited = entry.take(f.declared.saturating_add(1));
    let mut kept = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = limited.read(&mut chunk).map_err(|e| corrupt(&e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > f.declared {
            return Err(Error::invalid(format!(
                "{:?}: unpacks to more bytes than it declares; the archive is corrupt",
                f.name
            )));
        }
        if keep {
            kept.extend_from_slice(&chunk[..n]);
        }
    }
    if size != f.declared {
        return Err(corrupt(&format_args!(
            "{size} bytes where {} are declared",
            f.declared
        )));
    }
    Ok(kept)
}
