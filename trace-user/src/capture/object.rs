//! The eBPF object (crate `trace-ebpf`), built by trace-user's build.rs and embedded here.

/// The ELF object, 8-byte aligned as aya's parser requires.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trace-ebpf"));

/// The object's bytes, or an error when the build skipped the eBPF step (`AYA_BUILD_SKIP=1`
/// writes an empty placeholder).
pub fn bytes() -> Result<&'static [u8], ObjectError> {
    if OBJECT.is_empty() {
        return Err(ObjectError::NotBuilt);
    }
    Ok(OBJECT)
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error(
        "this iptrace was built with AYA_BUILD_SKIP=1: it has no eBPF object; rebuild without it"
    )]
    NotBuilt,
}
