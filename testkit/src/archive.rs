//! App archives as `rebeam.client.pack` builds them, for submissions from Rust.

use std::io::Write;

use zip::write::SimpleFileOptions;

/// An archive with `manifest_toml` as its root `rebeam.toml`, the given `(path, source)`
/// modules, and `padding` varied bytes stored uncompressed (for tests that need a large blob).
pub fn app_archive(
    manifest_toml: &str,
    modules: &[(&str, &str)],
    padding: usize,
) -> anyhow::Result<Vec<u8>> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let deflated =
        SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    w.start_file("rebeam.toml", deflated)?;
    w.write_all(manifest_toml.as_bytes())?;
    for (path, source) in modules {
        w.start_file(*path, deflated)?;
        w.write_all(source.as_bytes())?;
    }
    if padding > 0 {
        let stored =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        w.start_file("data.bin", stored)?;
        // Varied bytes, so the blob is as large as asked whatever the writer does.
        let bytes: Vec<u8> = (0..padding).map(|i| (i * 7 % 251) as u8).collect();
        w.write_all(&bytes)?;
    }
    Ok(w.finish()?.into_inner())
}
