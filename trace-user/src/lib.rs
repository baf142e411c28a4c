//! iptrace's collector library: everything that needs the kernel (capture backends, network
//! namespaces, the lab, doctor's probes). Pure logic lives in `trace-core`.

pub mod btf;
pub mod capture;
pub mod cmd;
pub mod doctor;
pub mod lab;
pub mod netns;
pub mod reference;
pub mod rulesource;
