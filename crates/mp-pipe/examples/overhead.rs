//! Per-message CPU cost of a Pipe within one thread (no cross-core traffic): send then recv.
use std::time::Instant;
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (a, b) = mp_pipe::Pipe::<u64>::new(mp_pipe::Duplex)?;
    let n = 2_000_000u64;
    let t = Instant::now();
    for i in 0..n {
        a.send(&i)?;
        b.recv()?;
    }
    println!(
        "send+recv u64: {:.1} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    let t = Instant::now();
    for i in 0..n {
        a.send_bytes(&i.to_le_bytes(), 0, None)?;
        let mut buf = [0u8; 8];
        b.recv_bytes_into(&mut buf, 0)?;
    }
    println!(
        "send_bytes+recv_bytes_into 8B: {:.1} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    let t = Instant::now();
    for i in 0..n {
        let v = mp_core::message::encode(&i)?;
        let _: u64 = mp_core::message::decode(&v)?;
    }
    println!(
        "encode+decode u64 (heap): {:.1} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    Ok(())
}
