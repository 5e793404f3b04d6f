//! The disk broker against a real temporary directory.
