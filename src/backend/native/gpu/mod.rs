//! The native backend on NVIDIA GPUs: library discovery ([`libs`]), our own kernels
//! compiled by NVRTC ([`kernels`]) with one typed launcher each ([`launch`]), and, with the
//! `cuda` feature, the model that runs the planner's graph with cuDNN (`cudnn`), cuBLAS
//! and those kernels (`device`).

pub mod kernels;
pub mod launch;
pub mod libs;

#[cfg(feature = "cuda")]
mod cudnn;
#[cfg(feature = "cuda")]
pub mod device;

#[cfg(all(test, feature = "cuda"))]
mod emulate;
