//! HDF5 split files: `images` (N,H,W,3) uint8 and `labels` (N,) int64.
//!
//! Files are written without object timestamps, so the same images give the same bytes:
//! that is what lets the engine cut off early after a re-run. Images are chunked one
//! batch per chunk, so a batch read touches one chunk.

use std::path::Path;

use anyhow::{Context, Result};
use hdf5::{Dataset, Extent, File, SimpleExtents};
use ndarray::{s, ArrayView1, ArrayView4};

/// Writes one split file block by block.
pub struct SplitWriter {
    file: File,
    images: Dataset,
    labels: Dataset,
    written: usize,
    h: usize,
    w: usize,
    /// The file, for messages.
    path: std::path::PathBuf,
    /// The same file opened again, to start its write-back early: the store fsyncs an
    /// artifact before publishing it, and started here that write overlaps the decoding
    /// of the next images instead of coming all at once at the end.
    writeback: Option<std::fs::File>,
    /// Bytes appended since write-back was last started.
    unflushed: usize,
}

/// How many appended bytes start the file's write-back to disk.
const WRITEBACK_EVERY: usize = 32 << 20;

impl SplitWriter {
    /// Create `path` with room for up to `capacity` images of `h` x `w`.
    pub fn create(path: &Path, capacity: usize, h: usize, w: usize, chunk: usize) -> Result<Self> {
        let file = File::with_options()
            .with_fcpl(|p| p.obj_track_times(false))
            .create(path)
            .with_context(|| format!("cannot create HDF5 file {}", path.display()))?;
        let chunk = chunk.max(1);
        // No chunk cache: whole chunks are written straight to the file, not copied first.
        let images = file
            .new_dataset::<u8>()
            .chunk_cache(0, 0, 1.0)
            .chunk((chunk, h, w, 3))
            .obj_track_times(false)
            .shape(SimpleExtents::from_vec(vec![
                Extent::resizable(capacity),
                Extent::from(h),
                Extent::from(w),
                Extent::from(3),
            ]))
            .create("images")
            .with_context(|| format!("cannot create `images` in {}", path.display()))?;
        let labels = file
            .new_dataset::<i64>()
            .chunk(chunk * 64)
            .obj_track_times(false)
            .shape(SimpleExtents::from_vec(vec![Extent::resizable(capacity)]))
            .create("labels")
            .with_context(|| format!("cannot create `labels` in {}", path.display()))?;
        Ok(SplitWriter {
            file,
            images,
            labels,
            written: 0,
            h,
            w,
            path: path.to_path_buf(),
            writeback: std::fs::File::open(path).ok(),
            unflushed: 0,
        })
    }

    /// Append `labels.len()` images (`pixels` holds them back to back, HWC).
    pub fn append(&mut self, pixels: &[u8], labels: &[i64]) -> Result<()> {
        let k = labels.len();
        if k == 0 {
            return Ok(());
        }
        let view = ArrayView4::from_shape((k, self.h, self.w, 3), pixels)?;
        let a = self.written;
        let at = || {
            format!(
                "cannot write images {a}..{} to {}",
                a + k,
                self.path.display()
            )
        };
        self.images
            .write_slice(view, s![a..a + k, .., .., ..])
            .with_context(at)?;
        self.labels
            .write_slice(ArrayView1::from(labels), s![a..a + k])
            .with_context(at)?;
        self.written += k;
        self.unflushed += pixels.len();
        if self.unflushed >= WRITEBACK_EVERY {
            if let Some(f) = &self.writeback {
                crate::content::start_writeback(f);
            }
            self.unflushed = 0;
        }
        Ok(())
    }

    /// Shrink to what was written and close; returns the image count.
    pub fn finish(self) -> Result<usize> {
        let path = self.path.clone();
        let done = || format!("cannot finish {}", path.display());
        self.images
            .resize((self.written, self.h, self.w, 3))
            .with_context(done)?;
        self.labels.resize(self.written).with_context(done)?;
        self.file.flush().with_context(done)?;
        let n = self.written;
        drop(self.images);
        drop(self.labels);
        self.file.close().with_context(done)?;
        Ok(n)
    }
}

/// A split read back whole.
pub struct SplitData {
    /// (N, H, W, 3).
    pub shape: [usize; 4],
    /// Pixels, HWC, image after image.
    pub images: Vec<u8>,
    /// Labels.
    pub labels: Vec<i64>,
}

/// Read a whole split file.
pub fn read_split(path: &Path) -> Result<SplitData> {
    let f =
        File::open(path).with_context(|| format!("cannot open HDF5 file {}", path.display()))?;
    let images = f.dataset("images")?;
    let labels = f.dataset("labels")?;
    let shape = images.shape();
    if shape.len() != 4 || shape[3] != 3 {
        anyhow::bail!(
            "{}: `images` has shape {:?}, expected (N,H,W,3)",
            path.display(),
            shape
        );
    }
    Ok(SplitData {
        shape: [shape[0], shape[1], shape[2], shape[3]],
        images: images.read_raw::<u8>()?,
        labels: labels.read_raw::<i64>()?,
    })
}
