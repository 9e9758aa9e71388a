//! OCI images and containers for shoal.
