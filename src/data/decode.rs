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
/// start-of-scan (FF DA). The segments before the scan are stepped over by their lengths,
/// so an EXIF thumbnail (a whole small JPEG, with its own FF DA and FF D9, inside the APP1
/// segment of most camera photos) is never taken for the image's own scan. Inside a scan
/// an FF byte is always followed by 00 or a restart marker, so a file cut anywhere after
/// its header has no EOI there. (The `image` crate's decoder fills a truncated file with
/// grey and reports success; PIL refuses it.)
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(scan) = first_scan(bytes) else {
        return false;
    };
    // The usual case first, without a search: the file ends with its EOI.
    let scan = &bytes[scan..];
    scan.ends_with(&[0xFF, 0xD9]) || scan.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Where the entropy-coded data of a JPEG's first scan starts: after the SOS segment that
/// follows SOI and the header segments (each stepped over by its length). `None` when the
/// file ends first, or has an EOI first.
fn first_scan(bytes: &[u8]) -> Option<usize> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    loop {
        // A marker: FF (any number of fill FFs), then its code. Bytes between segments
        // are passed over, as the decoder (not strict) and libjpeg pass them.
        while *bytes.get(i)? != 0xFF {
            i += 1;
        }
        while *bytes.get(i)? == 0xFF {
            i += 1;
        }
        let code = bytes[i];
        i += 1;
        match code {
            // Standalone markers (no length), and a stuffed FF 00 out of place.
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            0xD9 => return None,
            _ => {}
        }
        let len = u16::from_be_bytes([*bytes.get(i)?, *bytes.get(i + 1)?]) as usize;
        if len < 2 {
            return None;
        }
        i += len;
        if code == 0xDA {
            return (i <= bytes.len()).then_some(i);
        }
    }
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
    match Jpeg::open(bytes, path, max_pixels)? {
        Some(jpeg) => jpeg.into_rgb(),
        None => decode_with_image(bytes, path, max_pixels),
    }
}

/// A colour JPEG whose headers were read, ready to decode straight to RGB: zune-jpeg
/// called as the `image` crate calls it (the same options, so the same pixels), with the
/// headers parsed once rather than three times and no copy of the input or the output.
/// The fast path of [`decode_bytes_max`] and of the `hdf5` stage, which decodes into its
/// block buffer in place.
pub struct Jpeg<'a> {
    decoder: zune_jpeg::JpegDecoder<zune_jpeg::zune_core::bytestream::ZCursor<&'a [u8]>>,
    path: &'a Path,
    /// Width, height.
    pub dims: (u32, u32),
    /// Its EXIF orientation (applied by [`decode_bytes_max`], not by [`Jpeg::decode_into`]).
    pub orientation: image::metadata::Orientation,
}

impl<'a> Jpeg<'a> {
    /// The headers of `bytes` (the file `path`) when they are a complete JPEG in a colour
    /// space decoded to RGB directly (YCbCr, RGB, CMYK, YCCK); `None` for anything else
    /// (another format, or a grey or alpha JPEG, left to [`decode_with_image`]). A
    /// truncated JPEG, headers that do not parse, or more than `max_pixels` are errors.
    pub fn open(bytes: &'a [u8], path: &'a Path, max_pixels: u64) -> Result<Option<Self>> {
        use zune_jpeg::zune_core::{
            bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
        };
        // The signature `image` recognises a JPEG by: anything else goes there as before.
        if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            return Ok(None);
        }
        check_complete(bytes, path)?;
        let options = DecoderOptions::default()
            .jpeg_set_out_colorspace(ColorSpace::RGB)
            .set_strict_mode(false)
            .set_max_width(usize::MAX)
            .set_max_height(usize::MAX);
        let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
        decoder
            .decode_headers()
            .with_context(|| format!("cannot decode image {}", path.display()))?;
        if matches!(
            decoder.input_colorspace(),
            None | Some(ColorSpace::Luma | ColorSpace::LumaA | ColorSpace::RGBA)
        ) {
            return Ok(None);
        }
        let (w, h) = decoder.dimensions().expect("headers were decoded");
        let (w, h) = (w as u32, h as u32);
        let pixels = u64::from(w) * u64::from(h);
        if pixels > max_pixels {
            anyhow::bail!(
                "image {} is {w}x{h} = {pixels} pixels, more than the {max_pixels} allowed (a decompression bomb?); it is not decoded (raise the limit with --max-pixels if the image is meant)",
                path.display()
            );
        }
        let orientation = decoder
            .exif()
            .and_then(|e| image::metadata::Orientation::from_exif_chunk(e))
            .unwrap_or(image::metadata::Orientation::NoTransforms);
        Ok(Some(Jpeg {
            decoder,
            path,
            dims: (w, h),
            orientation,
        }))
    }

    /// Decode to RGB, HWC, into `out` (exactly width x height x 3 bytes), as stored: the
    /// orientation is not applied.
    pub fn decode_into(&mut self, out: &mut [u8]) -> Result<()> {
        let need = self.dims.0 as usize * self.dims.1 as usize * 3;
        assert_eq!(out.len(), need, "the output is the image's size");
        self.decoder
            .decode_into(out)
            .with_context(|| format!("cannot decode image {}", self.path.display()))
    }

    /// Decode to an upright RGB image (its orientation applied).
    pub fn into_rgb(mut self) -> Result<RgbImage> {
        let (w, h) = self.dims;
        let mut px = vec![0; w as usize * h as usize * 3];
        self.decode_into(&mut px)?;
        let img = RgbImage::from_raw(w, h, px).expect("the buffer is the image's size");
        Ok(match self.orientation {
            image::metadata::Orientation::NoTransforms => img,
            o => {
                let mut d = image::DynamicImage::ImageRgb8(img);
                d.apply_orientation(o);
                d.into_rgb8()
            }
        })
    }
}

/// A JPEG (by its start-of-image marker) cut short is an error naming `path`.
fn check_complete(bytes: &[u8], path: &Path) -> Result<()> {
    if bytes.starts_with(&[0xFF, 0xD8]) && !jpeg_is_complete(bytes) {
        anyhow::bail!(
            "cannot decode image {}: the JPEG is truncated (no end-of-image marker after its scan data)",
            path.display()
        );
    }
    Ok(())
}

/// [`decode_bytes_max`] through the `image` crate: every format it reads, converted to RGB.
fn decode_with_image(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<RgbImage> {
    use image::{DynamicImage, ImageDecoder, ImageReader};
    check_complete(bytes, path)?;
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

/// An indexed file that is not there any more: removed after its dataset was
/// fingerprinted, or, in an index of absolute paths (made before indexes named images
/// relative to their dataset), the dataset moved since the index was made.
#[derive(Debug, Clone)]
pub struct GoneFile {
    /// The file, as the index names it.
    pub file: std::path::PathBuf,
}

impl std::fmt::Display for GoneFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "image {} is not there: it was removed after its dataset was fingerprinted (or, in an index of absolute paths made by an earlier pipe, the dataset moved since); nothing is published",
            self.file.display()
        )
    }
}

impl std::error::Error for GoneFile {}

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

/// The refusal of image `r`, whose bytes are not the ones with content hash `hash`.
fn changed(r: &ImageRef, hash: &str) -> Unusable {
    let file = match r {
        ImageRef::File(p) | ImageRef::CifarRecord(p, _) => p.clone(),
    };
    Unusable::Changed(anyhow::Error::new(ChangedFile { file }).context(format!(
        "image {r} changed after its dataset was fingerprinted (its content is not the one indexed, {}...): nothing is published; run again to take the dataset as it is now",
        crate::ids::short(hash)
    )))
}

/// Check `bytes`, read for image `r`, against the content hash its index recorded
/// (`hash`, BLAKE3 hex; empty: not checked).
fn check(r: &ImageRef, bytes: &[u8], hash: &str) -> std::result::Result<(), Unusable> {
    if hash.is_empty() || blake3::hash(bytes).to_hex().as_str() == hash {
        Ok(())
    } else {
        Err(changed(r, hash))
    }
}

/// The bytes of image file `p` (index row `r`), checked against the content hash the
/// index recorded (`hash`; empty: not checked) as they are read, so the check costs no
/// second read. A file gone since it was fingerprinted is a changed dataset, not a bad
/// image.
pub fn read_checked(r: &ImageRef, p: &Path, hash: &str) -> std::result::Result<Vec<u8>, Unusable> {
    let bytes = match super::read_regular(p) {
        Ok(b) => b,
        Err(e) => {
            if !hash.is_empty() && std::fs::symlink_metadata(p).is_err() {
                // Indexed, fingerprinted, and gone now: not a bad image to skip, a dataset
                // that changed under the run (or moved since it was indexed).
                return Err(Unusable::Changed(anyhow::Error::new(GoneFile {
                    file: p.to_path_buf(),
                })));
            }
            return Err(Unusable::Bad(e));
        }
    };
    check(r, &bytes, hash)?;
    Ok(bytes)
}

/// Decode the image an index row points at, checking the bytes read against the content
/// hash the index recorded (`hash`, BLAKE3 hex; empty: not checked) as they are decoded.
pub fn decode_checked(
    r: &ImageRef,
    batches: &BatchCache,
    hash: &str,
) -> std::result::Result<RgbImage, Unusable> {
    match r {
        ImageRef::File(p) => {
            let bytes = read_checked(r, p, hash)?;
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
            check(r, rec, hash)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(img: &image::DynamicImage, quality: u8) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut out, quality,
        ))
        .unwrap();
        out
    }

    /// `bytes` (a JPEG) with an APP1 EXIF segment saying `orientation`, after its SOI.
    fn with_orientation(bytes: &[u8], orientation: u16) -> Vec<u8> {
        // "Exif\0\0", a big-endian TIFF header and one IFD entry: Orientation, SHORT, 1.
        let mut exif = b"Exif\0\0MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
        exif.extend_from_slice(&orientation.to_be_bytes());
        exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut out = bytes[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&exif);
        out.extend_from_slice(&bytes[2..]);
        out
    }

    fn picture(w: u32, h: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w.max(2)) as u8,
                ((x * 7 + y * 13) % 256) as u8,
                (y * 255 / h.max(2)) as u8 ^ ((x & 1) as u8 * 90),
            ])
        })
    }

    /// The direct zune-jpeg path (`Jpeg`) gives the pixels the `image` crate gives, for
    /// colour JPEGs of odd sizes and qualities, and one with an EXIF orientation (turned
    /// upright by both); grey JPEGs and PNGs take the `image` path.
    #[test]
    fn the_direct_jpeg_path_gives_the_image_crates_pixels() {
        let p = Path::new("t.jpg");
        for (w, h, q) in [
            (64, 64, 90),
            (13, 7, 75),
            (33, 17, 50),
            (1, 1, 95),
            (200, 120, 85),
        ] {
            let bytes = jpeg(&image::DynamicImage::ImageRgb8(picture(w, h)), q);
            assert!(Jpeg::open(&bytes, p, MAX_PIXELS).unwrap().is_some());
            let fast = decode_bytes(&bytes, p).unwrap();
            let slow = decode_with_image(&bytes, p, MAX_PIXELS).unwrap();
            assert_eq!(fast.dimensions(), (w, h));
            assert!(fast == slow, "{w}x{h} at quality {q}: the pixels differ");
            // Into a caller's buffer, as the hdf5 stage decodes.
            let mut slot = vec![7u8; (w * h * 3) as usize];
            Jpeg::open(&bytes, p, MAX_PIXELS)
                .unwrap()
                .unwrap()
                .decode_into(&mut slot)
                .unwrap();
            assert_eq!(slot, slow.into_raw());
        }
        // Stored sideways, marked "turn 90 clockwise" (6): both paths turn it upright.
        let stored = jpeg(&image::DynamicImage::ImageRgb8(picture(24, 10)), 90);
        let sideways = with_orientation(&stored, 6);
        let j = Jpeg::open(&sideways, p, MAX_PIXELS).unwrap().unwrap();
        assert_eq!(j.orientation, image::metadata::Orientation::Rotate90);
        let fast = decode_bytes(&sideways, p).unwrap();
        let slow = decode_with_image(&sideways, p, MAX_PIXELS).unwrap();
        assert_eq!(fast.dimensions(), (10, 24));
        assert!(fast == slow, "the turned JPEG's pixels differ");
        assert!(fast == image::imageops::rotate90(&decode_bytes(&stored, p).unwrap()));
        // Grey: left to `image` (grey replicated into R, G and B).
        let grey = jpeg(
            &image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(9, 5, |x, y| {
                image::Luma([(x * 20 + y) as u8])
            })),
            90,
        );
        assert!(Jpeg::open(&grey, p, MAX_PIXELS).unwrap().is_none());
        let g = decode_bytes(&grey, p).unwrap();
        assert!(g.pixels().all(|px| px[0] == px[1] && px[1] == px[2]));
        // A 4x3 image allowed 11 pixels: refused from its header.
        let small = jpeg(&image::DynamicImage::ImageRgb8(picture(4, 3)), 90);
        let e = Jpeg::open(&small, p, 11).err().unwrap().to_string();
        assert!(
            e.contains("4x3 = 12 pixels, more than the 11 allowed"),
            "{e}"
        );
        // Cut short: refused, never filled with grey.
        let cut = &small[..small.len() - 10];
        let e = decode_bytes(cut, p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn jpeg_is_complete_finds_the_end_marker_after_the_scan() {
        let bytes = jpeg(&image::DynamicImage::ImageRgb8(picture(8, 8)), 90);
        assert!(jpeg_is_complete(&bytes));
        // Trailing bytes after the EOI (some cameras add them) keep it complete.
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"\0\0padding");
        assert!(jpeg_is_complete(&trailing));
        assert!(!jpeg_is_complete(&bytes[..bytes.len() - 2]));
        assert!(!jpeg_is_complete(&bytes[..bytes.len() / 2]));
        // An EOI before the scan does not count.
        let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let mut early = bytes[..sos].to_vec();
        early.extend_from_slice(&[0xFF, 0xD9]);
        early.extend_from_slice(&bytes[sos..bytes.len() - 2]);
        assert!(!jpeg_is_complete(&early));
    }

    #[test]
    fn a_photo_cut_short_is_incomplete_even_with_a_whole_thumbnail_in_its_exif() {
        // As cameras write them: APP1 ("Exif") right after SOI holds a whole small JPEG,
        // its own scan and end marker included.
        let thumb = jpeg(&image::DynamicImage::ImageRgb8(picture(4, 4)), 80);
        let main = jpeg(&image::DynamicImage::ImageRgb8(picture(32, 24)), 90);
        let mut payload = b"Exif\0\0".to_vec();
        payload.extend_from_slice(&thumb);
        let mut photo = main[..2].to_vec();
        photo.extend_from_slice(&[0xFF, 0xE1]);
        photo.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        photo.extend_from_slice(&payload);
        photo.extend_from_slice(&main[2..]);
        assert!(jpeg_is_complete(&photo));
        let p = Path::new("photo.jpg");
        assert_eq!(decode_bytes(&photo, p).unwrap().dimensions(), (32, 24));
        let header = 2 + 4 + payload.len();
        for cut in [photo.len() - 2, photo.len() - 40, header + 200] {
            assert!(!jpeg_is_complete(&photo[..cut]), "cut at {cut}");
            let e = decode_bytes(&photo[..cut], p).unwrap_err().to_string();
            assert!(e.contains("truncated"), "{e}");
        }
        // Cut inside the thumbnail: no scan of its own yet.
        assert!(!jpeg_is_complete(&photo[..header - 10]));
        // Fill bytes before a marker, and stray bytes between segments (the decoder
        // passes over them), are allowed.
        let mut filled = main[..2].to_vec();
        filled.extend_from_slice(&[0xFF, 0xFF]);
        filled.extend_from_slice(&main[2..]);
        assert!(jpeg_is_complete(&filled));
        let mut padded = photo[..header].to_vec();
        padded.extend_from_slice(b"\0\0pad");
        padded.extend_from_slice(&photo[header..]);
        assert!(jpeg_is_complete(&padded));
        assert_eq!(decode_bytes(&padded, p).unwrap().dimensions(), (32, 24));
        assert!(!jpeg_is_complete(&padded[..padded.len() - 40]));
    }
}
