//! The CIFAR-10 binary format: 10,000 records a batch, each one label byte then a 32x32
//! image stored as three planes (R, G, B) of 1,024 bytes.

use std::path::Path;

use anyhow::Result;
use image::RgbImage;

/// Bytes per record: label + 3 x 32 x 32.
pub const RECORD: usize = 1 + 3 * 32 * 32;

/// The batch files of the training split, in order.
pub const TRAIN_BATCHES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];

/// The test batch file.
pub const TEST_BATCH: &str = "test_batch.bin";

/// Read a whole batch file, checking its length.
pub fn read_batch(path: &Path) -> Result<Vec<u8>> {
    let bytes = super::read_regular(path)?;
    check_batch(path, &bytes)?;
    Ok(bytes)
}

/// The bytes of batch file `path`, checked as whole records.
pub fn check_batch(path: &Path, bytes: &[u8]) -> Result<()> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        anyhow::bail!(
            "{}: {} bytes is not a whole number of {RECORD}-byte CIFAR-10 records",
            path.display(),
            bytes.len()
        );
    }
    Ok(())
}

/// Decode one record into (label, image).
pub fn decode_record(rec: &[u8]) -> (u8, RgbImage) {
    let mut img = RgbImage::new(32, 32);
    for (i, px) in img.pixels_mut().enumerate() {
        px.0 = [rec[1 + i], rec[1 + 1024 + i], rec[1 + 2048 + i]];
    }
    (rec[0], img)
}

/// Encode (label, 32x32 image) as one record.
pub fn encode_record(label: u8, img: &RgbImage) -> Vec<u8> {
    assert_eq!(img.dimensions(), (32, 32), "CIFAR-10 images are 32x32");
    let mut out = vec![0u8; RECORD];
    out[0] = label;
    for (i, px) in img.pixels().enumerate() {
        out[1 + i] = px.0[0];
        out[1 + 1024 + i] = px.0[1];
        out[1 + 2048 + i] = px.0[2];
    }
    out
}

/// Class names from the text of `batches.meta.txt` (one a line, blank lines ignored).
pub fn meta_names(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.to_string())
        .collect()
}
