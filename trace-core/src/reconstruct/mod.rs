//! Reconstruction of captured packets across hooks and tables (being built).
