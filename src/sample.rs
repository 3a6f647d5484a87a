//! STUB — replaced by the sample service from the e2e branch.
#![allow(missing_docs)]
use std::net::SocketAddr;

pub struct Sample {
    addr: SocketAddr,
}

impl Sample {
    pub async fn start(addr: SocketAddr) -> std::io::Result<Sample> {
        Ok(Sample { addr })
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

pub async fn serve_forever(_addr: SocketAddr) -> std::io::Result<()> {
    Ok(())
}
