//! The raw UDP relay ceiling for the load benchmarks (see `rtcd_loadgen::raw`): prints
//! its address, then forwards datagrams between the members of each call until killed.
//!
//! Usage: `udp-relay [--batched] [ADDRESS]` (default 127.0.0.1:0). `--batched`: through
//! rtcd's batched socket, one `recvmmsg` and one `sendmmsg` per batch instead of a system
//! call per datagram (`rtcd_loadgen::raw::serve_batched`).

fn main() -> anyhow::Result<()> {
    let mut batched = false;
    let mut address = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--batched" => batched = true,
            a if a.starts_with('-') => {
                anyhow::bail!("unknown option {a} (usage: udp-relay [--batched] [ADDRESS])")
            }
            a => address = Some(a.to_owned()),
        }
    }
    let address = address.unwrap_or_else(|| "127.0.0.1:0".into());
    if batched {
        let address: std::net::SocketAddr = address
            .parse()
            .map_err(|e| anyhow::anyhow!("bad address {address}: {e}"))?;
        let socket = rtcd::engine::net::udp::BatchSocket::bind(address, &Default::default())?;
        println!("udp-relay listening on {}", socket.local_addr());
        rtcd_loadgen::raw::serve_batched(&socket)?;
    } else {
        let socket = std::net::UdpSocket::bind(&address)?;
        println!("udp-relay listening on {}", socket.local_addr()?);
        rtcd_loadgen::raw::serve(&socket)?;
    }
    Ok(())
}
