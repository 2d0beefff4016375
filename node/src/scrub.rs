//! Blanking credentials in the memory the kernel shows as `/proc/self/environ` and
//! `/proc/self/cmdline`.
//!
//! Removing a variable from the environment (`std::env::remove_var`) only drops its pointer
//! from `environ`: the original bytes stay on the initial stack, and `/proc/self/environ`
//! (which any code in the process, app code included, can read) still shows them; the same
//! holds for flags on the command line. Once the node has parsed both into copies, nothing
//! refers to those bytes, so they are overwritten in place, as `setproctitle` does.

use std::ops::Range;

/// The byte that replaces a credential's characters (the separators stay).
const BLANK: u8 = b'*';

/// Overwrites the values of `vars` in the original environment block and the values of
/// `flags` (`--flag VALUE` or `--flag=VALUE`) in the original argument block. Does nothing
/// where `/proc/self/stat` cannot be read.
///
/// # Safety
/// Only while no other thread runs, after the environment and arguments were parsed into
/// copies and the `vars` removed from `environ`: no pointer into the blanked bytes may be
/// used afterwards.
pub unsafe fn blank_original_blocks(vars: &[&str], flags: &[&str]) {
    let Some(blocks) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| blocks(&stat))
    else {
        return;
    };
    // SAFETY: as this function's.
    unsafe {
        blank(blocks.args, |b| credential_args(b, flags));
        blank(blocks.env, |b| credential_vars(b, vars));
    }
}

/// Overwrites the ranges `find` picks in the process's memory at `block`.
///
/// # Safety
/// `block` must be the argument or environment block the kernel reported for this process,
/// and nothing may use the picked bytes afterwards.
unsafe fn blank(block: Range<usize>, find: impl FnOnce(&[u8]) -> Vec<Range<usize>>) {
    if block.end <= block.start {
        return;
    }
    let base = block.start as *mut u8;
    // SAFETY: the kernel reports this range as the process's own block, mapped and writable
    // on the main thread's stack; the copy ends the borrow before the writes.
    let bytes = unsafe { std::slice::from_raw_parts(base, block.end - block.start) }.to_vec();
    for range in find(&bytes) {
        for i in range {
            // Volatile: nothing in this process reads the bytes again, but the kernel does.
            // SAFETY: `i` lies within the block.
            unsafe { base.add(i).write_volatile(BLANK) };
        }
    }
}

/// Where the argument and environment blocks lie.
#[derive(Debug, PartialEq, Eq)]
struct Blocks {
    args: Range<usize>,
    env: Range<usize>,
}

/// `arg_start`, `arg_end`, `env_start` and `env_end` (fields 48 to 51 of `proc(5)`'s
/// `/proc/pid/stat`), counted after the command name, which may hold spaces and `)`.
fn blocks(stat: &str) -> Option<Blocks> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<usize> { fields.get(n - 3)?.parse().ok() };
    Some(Blocks {
        args: field(48)?..field(49)?,
        env: field(50)?..field(51)?,
    })
}

/// The NUL-terminated strings of `block` with their offsets.
fn strings(block: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut at = 0;
    block.split(|b| *b == 0).map(move |s| {
        let start = at;
        at += s.len() + 1;
        (start, s)
    })
}

/// The byte ranges of the values of `vars` (`NAME=VALUE` entries) in an environment block.
fn credential_vars(block: &[u8], vars: &[&str]) -> Vec<Range<usize>> {
    strings(block)
        .filter_map(|(at, entry)| {
            vars.iter().find_map(|v| {
                let name = v.as_bytes();
                (entry.len() > name.len() && entry.starts_with(name) && entry[name.len()] == b'=')
                    .then(|| at + name.len() + 1..at + entry.len())
            })
        })
        .filter(|r| !r.is_empty())
        .collect()
}

/// The byte ranges of the values of `flags` (`--flag VALUE`, `--flag=VALUE`) in an argument
/// block; arguments after `--` belong to the script and are left alone.
fn credential_args(block: &[u8], flags: &[&str]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut value_next = false;
    for (at, arg) in strings(block) {
        if value_next {
            value_next = false;
            out.push(at..at + arg.len());
            continue;
        }
        if arg == b"--" {
            break;
        }
        for flag in flags {
            let flag = flag.as_bytes();
            if arg == flag {
                value_next = true;
            } else if arg.len() > flag.len() && arg.starts_with(flag) && arg[flag.len()] == b'=' {
                out.push(at + flag.len() + 1..at + arg.len());
            }
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_blocks_after_a_command_name_with_spaces_and_parentheses() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[0] = "S".into();
        let stat = format!("42 (a) b (c)) {}\n", fields.join(" "));
        assert_eq!(
            blocks(&stat),
            Some(Blocks {
                args: 48..49,
                env: 50..51
            })
        );
        assert_eq!(blocks("42 (short) S 1 2"), None);
    }

    #[test]
    fn blanks_only_the_values_of_credential_variables() {
        let block =
            b"PATH=/bin\0REBEAM_SECRET=abc\0REBEAM_SECRET_FILE=/s\0REBEAM_NODE_SECRET=xy\0\0";
        let vars = ["REBEAM_SECRET", "REBEAM_NODE_SECRET"];
        let got: Vec<&[u8]> = credential_vars(block, &vars)
            .into_iter()
            .map(|r| &block[r])
            .collect();
        assert_eq!(got, [&b"abc"[..], &b"xy"[..]]);
    }

    #[test]
    fn blanks_flag_values_in_both_spellings_and_not_after_a_double_dash() {
        let block = b"rebeam-node\0--secret\0s1\0--name\0a\0--node-secret=s2\0--secret-file\0f\0--\0--secret\0kept\0";
        let flags = ["--secret", "--node-secret"];
        let got: Vec<&[u8]> = credential_args(block, &flags)
            .into_iter()
            .map(|r| &block[r])
            .collect();
        assert_eq!(got, [&b"s1"[..], &b"s2"[..]]);
    }
}
