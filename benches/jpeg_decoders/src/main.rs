//! Time three JPEG decoders on the same files, one thread, three rounds: the `image` crate
//! (as pipe called it before), zune-jpeg called directly (as the hdf5 stage calls it now:
//! the headers parsed once, decoded into the caller's buffer) and libjpeg-turbo 3 through
//! `turbojpeg` (a reused decompressor). Then count the bytes where libjpeg-turbo's pixels
//! differ from zune-jpeg's.
//!
//! Usage: jpeg_decoders <train folder of a Tiny-ImageNet tree> [classes]

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let root = args
        .next()
        .expect("usage: jpeg_decoders <train folder> [classes]");
    let classes: usize = args.next().map_or(40, |c| c.parse().expect("classes"));
    let mut files = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("train folder")
        .map(|d| d.unwrap().path().join("images"))
        .collect();
    dirs.sort();
    for d in dirs.into_iter().take(classes) {
        for f in std::fs::read_dir(&d).unwrap() {
            files.push(std::fs::read(f.unwrap().path()).unwrap());
        }
    }
    let n = files.len();
    let mean = files.iter().map(|f| f.len()).sum::<usize>() / n;
    println!("{n} files, mean {mean} bytes");
    let per = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let (mut zune, mut turbo) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let t = Instant::now();
        for f in &files {
            let img = image::load_from_memory_with_format(f, image::ImageFormat::Jpeg).unwrap();
            std::hint::black_box(img.into_rgb8());
        }
        let with_image = per(t);

        let t = Instant::now();
        zune.clear();
        for f in &files {
            use zune_jpeg::zune_core::{
                bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
            };
            let options = DecoderOptions::default()
                .jpeg_set_out_colorspace(ColorSpace::RGB)
                .set_strict_mode(false);
            let mut d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(&f[..]), options);
            d.decode_headers().unwrap();
            let mut px = vec![0u8; d.output_buffer_size().unwrap()];
            d.decode_into(&mut px).unwrap();
            zune.push(px);
        }
        let direct = per(t);

        let t = Instant::now();
        turbo.clear();
        let mut dec = turbojpeg::Decompressor::new().unwrap();
        for f in &files {
            let h = dec.read_header(f).unwrap();
            let mut px = vec![0u8; 3 * h.width * h.height];
            let image = turbojpeg::Image {
                pixels: &mut px[..],
                width: h.width,
                pitch: 3 * h.width,
                height: h.height,
                format: turbojpeg::PixelFormat::RGB,
            };
            dec.decompress(f, image).unwrap();
            turbo.push(px);
        }
        let libjpeg_turbo = per(t);
        println!(
            "round {round}: image crate {with_image:.1} us/image, zune-jpeg direct {direct:.1}, libjpeg-turbo {libjpeg_turbo:.1}"
        );
    }
    let (mut differ, mut max, mut total) = (0usize, 0u8, 0usize);
    for (a, b) in zune.iter().zip(&turbo) {
        for (p, q) in a.iter().zip(b) {
            differ += usize::from(p != q);
            max = max.max(p.abs_diff(*q));
            total += 1;
        }
    }
    println!(
        "libjpeg-turbo against zune-jpeg: {differ} of {total} bytes differ ({:.2} %), by at most {max}",
        differ as f64 * 100.0 / total as f64
    );
}
