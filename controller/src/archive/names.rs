//! Entry-name rules of app archives, the same as the client's (`rebeam.client.archive`).

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// Longest entry name, in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest single path component, in UTF-8 bytes.
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Refuses a name unless it is a safe relative POSIX path (the client's `check_name`).
pub fn check(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("an entry has an empty name"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad(
            name,
            "the name contains control characters; rename the file",
        ));
    }
    if name.contains('\\') {
        return Err(bad(
            name,
            "the name contains a backslash; use '/' between folders",
        ));
    }
    if name.starts_with('/') || has_drive(name) {
        return Err(bad(
            name,
            "absolute paths are not allowed; names are relative to the app",
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(bad(
            name,
            &format!(
                "the name is {} bytes; use at most {MAX_NAME_BYTES}",
                name.len()
            ),
        ));
    }
    for part in name.split('/') {
        if part.is_empty() || part == "." {
            return Err(bad(name, "empty or '.' path components are not allowed"));
        }
        if part == ".." {
            return Err(bad(
                name,
                "'..' is not allowed; every file must stay inside the app",
            ));
        }
        if part.len() > MAX_COMPONENT_BYTES {
            return Err(bad(
                name,
                &format!("a path component is over {MAX_COMPONENT_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

/// `C:`-style prefixes, absolute on Windows.
fn has_drive(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

fn bad(name: &str, what: &str) -> Error {
    Error::invalid(format!("{name:?}: {what}"))
}

/// How a file system that ignores case and Unicode normalization sees a name (Python's
/// `unicodedata.normalize("NFC", name).casefold()`; upper- then lower-casing gives the same
/// equivalence as full case folding for the cases that matter, such as `ß` and `SS`).
fn fold(name: &str) -> String {
    let nfc: String = name.nfc().collect();
    nfc.to_uppercase().to_lowercase()
}

/// Names seen so far: refuses duplicates (ignoring case and Unicode normalization, as some
/// file systems do) and a name that is both a file and a folder (the client's `_NameSet`).
#[derive(Default)]
pub struct NameSet {
    files: HashMap<String, String>,
    dirs: HashMap<String, String>,
}

impl NameSet {
    /// Adds a file name that passed [`check`].
    pub fn add(&mut self, name: &str) -> Result<()> {
        let key = fold(name);
        if let Some(other) = self.files.get(&key) {
            if other == name {
                return Err(bad(name, "duplicate name"));
            }
            return Err(bad(
                name,
                &format!(
                    "duplicate name: it is the same as {other:?} on file systems that ignore case; rename one of them"
                ),
            ));
        }
        if self.dirs.contains_key(&key) {
            return Err(bad(name, "the name is both a file and a folder"));
        }
        for (i, c) in name.char_indices() {
            if c != '/' {
                continue;
            }
            let prefix = &name[..i];
            let pkey = fold(prefix);
            if self.files.contains_key(&pkey) {
                return Err(bad(prefix, "the name is both a file and a folder"));
            }
            self.dirs.entry(pkey).or_insert_with(|| prefix.to_string());
        }
        self.files.insert(key, name.to_string());
        Ok(())
    }
}
