//! OCI images and containers for shoal: images from OCI layouts and archives into a
//! content-addressed layer cache, container root filesystems built from it, and a
//! `Runtime` seam whose real implementation runs containers through youki's libcontainer,
//! whose clones happen in a single-threaded helper process (the zygote).

pub mod bundle;
pub mod cgroup_sweep;
pub mod container_log;
pub mod digest;
pub mod fake_runtime;
pub mod image;
pub mod image_layout;
pub mod image_source;
pub mod layer_cache;
pub mod layer_unpack;
pub mod libcontainer_runtime;
pub mod network;
pub mod restart_policy;
pub mod rootfs;
pub mod runtime;
pub mod seccomp_profile;
pub mod zygote;
pub mod zygote_client;
pub mod zygote_protocol;

pub use bundle::{Limits, Mount};
pub use digest::Digest;
pub use fake_runtime::FakeRuntime;
pub use image::{ImageError, ImageStore, PreparedImage};
pub use libcontainer_runtime::{CREATE_TIMEOUT_MS, LibcontainerRuntime, RuntimeSettings};
pub use restart_policy::{RestartDecision, RestartPolicy, RestartTracker};
pub use rootfs::{Rootfs, RootfsError, RootfsMode};
pub use runtime::{
    AdoptionReport, ContainerConfig, ContainerState, ContainerStatus, ExecOutcome, ExitStatus,
    Runtime, RuntimeError,
};
pub use tar;
pub use zygote_client::{ZygoteCommand, ZygoteError};
