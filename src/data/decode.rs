//! Image decoding (JPEG/PNG through `image`, CIFAR-10 records) and resizing.

use std::path::Path;

use anyhow::{Context, Result};

use image::{imageops::FilterType, RgbImage};

use super::{cifar, index::ImageRef};
use crate::manifest::ResizeFilter;

fn filter(f: ResizeFilter) -> FilterType {
    match f {
        ResizeFilter::Nearest => FilterType::Nearest,
        ResizeFilter::Bilinear => FilterType::Triangle,
        ResizeFilter::Bicubic => FilterType::CatmullRom,
        ResizeFilter::Lanczos3 => FilterType::Lanczos3,
    }
}

/// Whether a JPEG's entropy-coded data ends: an EOI marker (FF D9) after the first
/// start-of-scan (FF DA). Inside a scan an FF byte is always followed by 00 or a restart
/// marker, so a file cut anywhere after its header has no EOI there. (The `image` crate's
/// decoder fills a truncated file with grey and reports success; PIL refuses it.)
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).position(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// The most pixels an image may have unless told otherwise (`pipe predict --max-pixels`):
/// Pillow's default limit (about 179 million). A small file that claims more (a
/// decompression bomb) is refused from its header, before any pixel is decoded.
pub const MAX_PIXELS: u64 = 178_956_970;

/// Decode an encoded image file to RGB (grayscale and RGBA are converted), upright (its
/// EXIF orientation applied). A JPEG whose data stops before its end marker is an error;
/// so is a path that is not a regular file, and an image of more than [`MAX_PIXELS`].
pub fn decode_file(path: &Path) -> Result<RgbImage> {
    decode_bytes(&super::read_regular(path)?, path)
}

/// [`decode_file`] with its own pixel limit.
pub fn decode_file_max(path: &Path, max_pixels: u64) -> Result<RgbImage> {
    decode_bytes_max(&super::read_regular(path)?, path, max_pixels)
}

/// Decode an encoded image (the bytes of file `path`) to RGB, upright.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    decode_bytes_max(bytes, path, MAX_PIXELS)
}

/// [`decode_bytes`] with its own pixel limit. The image is turned as its EXIF orientation
/// says (as Pillow's `ImageOps.exif_transpose` does): a phone photo stored sideways is
/// classified, and stored, upright.
pub fn decode_bytes_max(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<RgbImage> {
    use image::{DynamicImage, ImageDecoder, ImageReader};
    if bytes.starts_with(&[0xFF, 0xD8]) && !jpeg_is_complete(bytes) {
        anyhow::bail!(
            "cannot decode image {}: the JPEG is truncated (no end-of-image marker after its scan data)",
            path.display()
        );
    }
    let cannot = || format!("cannot decode image {}", path.display());
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .with_context(cannot)?;
    let mut decoder = reader.into_decoder().with_context(cannot)?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        anyhow::bail!(
            "image {} is {w}x{h} = {pixels} pixels, more than the {max_pixels} allowed (a decompression bomb?); it is not decoded (raise the limit with --max-pixels if the image is meant)",
            path.display()
        );
    }
    let orientation = decoder.orientation().with_context(cannot)?;
    let mut img = DynamicImage::from_decoder(decoder).with_context(cannot)?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// Why an indexed image could not be used.
pub enum Unusable {
    /// Its bytes are not the bytes the index recorded: the dataset changed since it was
    /// fingerprinted. Never skipped: what would be made is not what the key vouches for.
    Changed(anyhow::Error),
    /// It cannot be read as an image (undecodable, truncated, not a regular file).
    Bad(anyhow::Error),
}

/// A dataset file whose bytes are not the ones its fingerprint recorded: carried in the
/// error's chain, so the engine can make the next fingerprint read the file again (its
/// size and time may not show the change).
#[derive(Debug, Clone)]
pub struct ChangedFile {
    /// The file, as the index names it.
    pub file: std::path::PathBuf,
}

impl std::fmt::Display for ChangedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is not the file that was fingerprinted",
            self.file.display()
        )
    }
}

impl std::error::Error for ChangedFile {}

/// Decode the image an index row points at, checking the bytes read against the content
/// hash the index recorded (`hash`, BLAKE3 hex; empty: not checked) as they are decoded,
/// so the check costs no second read.
pub fn decode_checked(
    r: &ImageRef,
    batches: &BatchCache,
    hash: &str,
) -> std::result::Result<RgbImage, Unusable> {
    let check = |bytes: &[u8]| -> std::result::Result<(), Unusable> {
        if hash.is_empty() || blake3::hash(bytes).to_hex().as_str() == hash {
            return Ok(());
        }
        let file = match r {
            ImageRef::File(p) | ImageRef::CifarRecord(p, _) => p.clone(),
        };
        Err(Unusable::Changed(anyhow::Error::new(ChangedFile { file }).context(
            format!(
                "image {r} changed after its dataset was fingerprinted (its content is not the one indexed, {}...): nothing is published; run again to take the dataset as it is now",
                crate::ids::short(hash)
            ),
        )))
    };
    match r {
        ImageRef::File(p) => {
            if !hash.is_empty() && std::fs::symlink_metadata(p).is_err() {
                // Indexed, fingerprinted, and gone now: not a bad image to skip, a dataset
                // that changed under the run.
                return Err(Unusable::Changed(anyhow::anyhow!(
                    "image {r} was removed after its dataset was fingerprinted: nothing is published; run again to take the dataset as it is now"
                )));
            }
            let bytes = super::read_regular(p).map_err(Unusable::Bad)?;
            check(&bytes)?;
            decode_bytes(&bytes, p).map_err(Unusable::Bad)
        }
        ImageRef::CifarRecord(p, n) => {
            let bytes = batches.get(p).map_err(Unusable::Bad)?;
            let start = n * cifar::RECORD;
            let rec = bytes.get(start..start + cifar::RECORD).ok_or_else(|| {
                Unusable::Bad(anyhow::anyhow!(
                    "{}: no record {n} (file holds {})",
                    p.display(),
                    bytes.len() / cifar::RECORD
                ))
            })?;
            check(rec)?;
            Ok(cifar::decode_record(rec).1)
        }
    }
}

/// Decode the image an index row points at; `batch` caches the bytes of a CIFAR batch.
pub fn decode_ref(r: &ImageRef, batches: &BatchCache) -> Result<RgbImage> {
    match r {
        ImageRef::File(p) => decode_file(p),
        ImageRef::CifarRecord(p, n) => {
            let bytes = batches.get(p)?;
            let start = n * cifar::RECORD;
            let rec = bytes.get(start..start + cifar::RECORD).with_context(|| {
                format!(
                    "{}: no record {n} (file holds {})",
                    p.display(),
                    bytes.len() / cifar::RECORD
                )
            })?;
            Ok(cifar::decode_record(rec).1)
        }
    }
}

/// Resize to `[w, h]` if the image is not that size already.
pub fn resize_to(img: RgbImage, size: Option<[u32; 2]>, f: ResizeFilter) -> RgbImage {
    match size {
        Some([w, h]) if img.dimensions() != (w, h) => {
            image::imageops::resize(&img, w, h, filter(f))
        }
        _ => img,
    }
}

/// CIFAR batch files read once and shared between threads.
#[derive(Default)]
pub struct BatchCache {
    map: std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, std::sync::Arc<Vec<u8>>>>,
}

impl BatchCache {
    /// The bytes of a batch file, read on first use.
    pub fn get(&self, p: &Path) -> Result<std::sync::Arc<Vec<u8>>> {
        let mut m = self.map.lock().expect("batch cache poisoned");
        if let Some(b) = m.get(p) {
            return Ok(b.clone());
        }
        let b = std::sync::Arc::new(cifar::read_batch(p)?);
        m.insert(p.to_path_buf(), b.clone());
        Ok(b)
    }
}
