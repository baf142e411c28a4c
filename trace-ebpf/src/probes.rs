//! The programs themselves (bpf target only).

/// NF_ACCEPT: a probe never changes the packet's fate.
const NF_ACCEPT: i32 = 1;

/// BPF_PROG_TYPE_NETFILTER probe (ELF section "netfilter", as libbpf names it). aya 0.14 has
/// no loader for this program type; trace-user loads and links it itself.
#[no_mangle]
#[link_section = "netfilter"]
pub extern "C" fn nf_probe(_ctx: *mut core::ffi::c_void) -> i32 {
    NF_ACCEPT
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[no_mangle]
#[link_section = "license"]
pub static LICENSE: [u8; 4] = *b"GPL\0";
