//! `pipe demo-data`: a generated dataset in a real layout.

use std::path::Path;

use anyhow::Result;

use crate::data::synthetic;

/// Dataset layouts `pipe demo-data` can write.
#[derive(Debug, Clone, Copy)]
pub enum DemoLayout {
    /// Tiny ImageNet folders.
    TinyImagenet,
    /// CIFAR-10 binary batches.
    Cifar10,
    /// `root/<class>/*.jpg`.
    ImageFolder,
}

/// `pipe demo-data`: write a generated dataset in a real layout.
pub fn demo_data(
    dir: &Path,
    layout: DemoLayout,
    classes: usize,
    per_class: usize,
    val_per_class: usize,
    size: u32,
    seed: u64,
) -> Result<()> {
    let t = std::time::Instant::now();
    let n = match layout {
        DemoLayout::TinyImagenet => {
            synthetic::write_tiny_imagenet(dir, classes, per_class, val_per_class, size, seed)?
        }
        DemoLayout::Cifar10 => synthetic::write_cifar10(dir, per_class, seed)?,
        DemoLayout::ImageFolder => {
            synthetic::write_image_folder(dir, classes, per_class, size, seed)?
        }
    };
    eprintln!(
        "wrote {n} images to {} in {:.1}s",
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
