//! shoal's replicated cluster state. Pure data and logic: no I/O, no clock reads, no threads.
