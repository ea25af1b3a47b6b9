//! The raw UDP relay ceiling for the load benchmarks (see `rtcd_loadgen::raw`): prints
//! its address, then forwards datagrams between the members of each call until killed.
//!
//! Usage: `udp-relay [ADDRESS]` (default 127.0.0.1:0).

fn main() -> anyhow::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let socket = std::net::UdpSocket::bind(&address)?;
    println!("udp-relay listening on {}", socket.local_addr()?);
    rtcd_loadgen::raw::serve(&socket)?;
    Ok(())
}
