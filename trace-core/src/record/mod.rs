//! Recording file format (being built).
