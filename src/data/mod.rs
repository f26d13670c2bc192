//! Data formats: dataset indexes, CIFAR-10 batches, image decoding, HDF5 split files and
//! the synthetic dataset generator. No caching or pipeline logic lives here.

pub mod augment;
pub mod checkpoint;
pub mod cifar;
pub mod decode;
pub mod h5;
pub mod index;
pub mod synthetic;
