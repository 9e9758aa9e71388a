//! Multi-node cluster harness for shoal.
