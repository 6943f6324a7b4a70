//! Frames built byte by byte from a `FrameSpec`, so that every field can be wrong: the
//! headers with valid lengths and checksums first, then the spec's one mutation.

use crate::gen::{
    Dest, FrameSpec, Kind, Mutation, CLIENT_MAC, CLOSED_PORT, LISTEN_PORT, OTHER4, OTHER6, SERVER4, SERVER6,
    SERVER_MAC,
};

impl FrameSpec {
    pub fn client4(&self) -> [u8; 4] {
        [198, 18, 1, self.source]
    }

    pub fn client6(&self) -> [u8; 16] {
        let mut a = SERVER6;
        a[13] = 1;
        a[15] = self.source;
        a
    }

    fn dst_port(&self) -> u16 {
        if self.dest == Dest::Closed {
            CLOSED_PORT
        } else {
            LISTEN_PORT
        }
    }

    /// The flow's initial sequence number: a function of the flow, so that an `Ack`
    /// completes whatever `Syn` of the same flow came before it.
    fn isn(&self) -> u32 {
        0x1000_0000 ^ (u32::from(self.source) << 16) ^ u32::from(self.sport) ^ u32::from(self.v6) << 28
    }

    /// The frame's bytes, mutation applied.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128 + usize::from(self.payload_len));
        f.extend_from_slice(&SERVER_MAC);
        f.extend_from_slice(&CLIENT_MAC);
        for (i, tpid) in self.vlan.iter().enumerate() {
            f.extend_from_slice(&tpid.to_be_bytes());
            #[allow(clippy::cast_possible_truncation, reason = "at most 3 tags")]
            f.extend_from_slice(&(10 + i as u16).to_be_bytes());
        }
        f.extend_from_slice(&if self.v6 { 0x86ddu16 } else { 0x0800 }.to_be_bytes());
        let l3 = f.len();
        let tcp = self.tcp_header();
        let payload = vec![0xabu8; usize::from(self.payload_len)];
        let l4;
        if self.v6 {
            let dst = if self.dest == Dest::NotLocal { OTHER6 } else { SERVER6 };
            let mut ext = Vec::new();
            let mut next_of_prev = Vec::new();
            for (kind, units) in &self.ext_headers {
                next_of_prev.push(*kind);
                let len = if *kind == 44 { 8 } else { (usize::from(*units) + 1) * 8 };
                let mut h = vec![0u8; len];
                h[1] = if *kind == 44 { 0 } else { *units };
                ext.push(h);
            }
            // Each header names the next; the last names TCP.
            for (i, h) in ext.iter_mut().enumerate() {
                h[0] = next_of_prev.get(i + 1).copied().unwrap_or(6);
            }
            let ext: Vec<u8> = ext.concat();
            let first = next_of_prev.first().copied().unwrap_or(6);
            let payload_len = ext.len() + tcp.len() + payload.len();
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&u16::try_from(payload_len).expect("below 64 KiB").to_be_bytes());
            f.extend_from_slice(&[first, 64]);
            f.extend_from_slice(&self.client6());
            f.extend_from_slice(&dst);
            f.extend_from_slice(&ext);
            l4 = f.len();
            let mut tcp = tcp;
            let sum =
                tcp_checksum(&pseudo6(&self.client6(), &dst, tcp.len() + payload.len()), &tcp, &payload);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&tcp);
        } else {
            let dst = if self.dest == Dest::NotLocal { OTHER4 } else { SERVER4 };
            let opts = pad4(&self.ip_options);
            let ihl = 20 + opts.len();
            let total = ihl + tcp.len() + payload.len();
            let mut ip = vec![0u8; 20];
            #[allow(clippy::cast_possible_truncation, reason = "IHL fits a nibble")]
            {
                ip[0] = 0x40 | (ihl / 4) as u8;
            }
            ip[2..4].copy_from_slice(&u16::try_from(total).expect("below 64 KiB").to_be_bytes());
            ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            ip[6] = 0x40; // DF
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&self.client4());
            ip[16..20].copy_from_slice(&dst);
            ip.extend_from_slice(&opts);
            let sum = finish(add(0, &ip));
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&ip);
            l4 = f.len();
            let mut tcp = tcp;
            let sum = tcp_checksum(&pseudo4(self.client4(), dst, tcp.len() + payload.len()), &tcp, &payload);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&tcp);
        }
        f.extend_from_slice(&payload);
        self.mutate(f, l3, l4)
    }

    fn tcp_header(&self) -> Vec<u8> {
        let opts = pad4(&self.tcp_options);
        let isn = self.isn();
        let (flags, seq, ack): (u8, u32, u32) = match self.kind {
            Kind::Syn => (0x02, isn, 0),
            Kind::SynAck => (0x12, isn, 0x0bad_cafe),
            Kind::Ack | Kind::CookieAck => (0x10, isn.wrapping_add(1), 0x0bad_cafe),
            Kind::Fin => (0x11, isn.wrapping_add(1), 0x0bad_cafe),
            Kind::Rst => (0x04, isn.wrapping_add(1), 0),
            Kind::Flags(f) => (f, if f & 0x02 != 0 { isn } else { isn.wrapping_add(1) }, 0x0bad_cafe),
        };
        let mut h = vec![0u8; 20];
        h[0..2].copy_from_slice(&self.sport.to_be_bytes());
        h[2..4].copy_from_slice(&self.dst_port().to_be_bytes());
        h[4..8].copy_from_slice(&seq.to_be_bytes());
        h[8..12].copy_from_slice(&ack.to_be_bytes());
        #[allow(clippy::cast_possible_truncation, reason = "at most 60 bytes")]
        {
            h[12] = (((20 + opts.len()) / 4) as u8) << 4;
        }
        h[13] = flags;
        h[14..16].copy_from_slice(&64240u16.to_be_bytes());
        h.extend_from_slice(&opts);
        h
    }

    fn mutate(&self, mut f: Vec<u8>, l3: usize, l4: usize) -> Vec<u8> {
        let set = |f: &mut Vec<u8>, at: usize, bytes: &[u8]| {
            if at + bytes.len() <= f.len() {
                f[at..at + bytes.len()].copy_from_slice(bytes);
            }
        };
        let len_at = if self.v6 { l3 + 4 } else { l3 + 2 };
        match &self.mutation {
            Mutation::None => {}
            Mutation::Truncate(i) => f.truncate(i.index(f.len() + 1)),
            Mutation::VersionIhl(b) => f[l3] = *b,
            Mutation::DataOffset(n) => f[l4 + 12] = (n << 4) | (f[l4 + 12] & 0x0f),
            Mutation::LengthDelta(d) => {
                let v = u16::from_be_bytes([f[len_at], f[len_at + 1]]);
                set(&mut f, len_at, &v.wrapping_add_signed(*d).to_be_bytes());
            }
            Mutation::Length(v) => set(&mut f, len_at, &v.to_be_bytes()),
            Mutation::Fragment(bits) => {
                if !self.v6 {
                    let bits: u16 = (bits & 0x3fff) | (0x2000 * u16::from(*bits == 0));
                    set(&mut f, l3 + 6, &bits.to_be_bytes());
                }
            }
            Mutation::TcpChecksum(v) => set(&mut f, l4 + 16, &v.to_be_bytes()),
            Mutation::IpChecksum(v) => {
                if !self.v6 {
                    set(&mut f, l3 + 10, &v.to_be_bytes());
                }
            }
            Mutation::EtherType(t) => set(&mut f, l3 - 2, &t.to_be_bytes()),
            Mutation::Byte(i, b) => {
                let at = i.index(f.len());
                f[at] = *b;
            }
        }
        f
    }
}

fn pad4(b: &[u8]) -> Vec<u8> {
    let mut v = b[..b.len().min(40)].to_vec();
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

fn add(mut sum: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    sum
}

fn finish(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[allow(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    !(sum as u16)
}

fn pseudo4(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = [src.as_slice(), dst.as_slice(), &[0, 6]].concat();
    #[allow(clippy::cast_possible_truncation, reason = "a frame is below 64 KiB")]
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

fn pseudo6(src: &[u8; 16], dst: &[u8; 16], len: usize) -> Vec<u8> {
    let mut p = [src.as_slice(), dst.as_slice()].concat();
    #[allow(clippy::cast_possible_truncation, reason = "a frame is below 64 KiB")]
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 6]);
    p
}

fn tcp_checksum(pseudo: &[u8], tcp: &[u8], payload: &[u8]) -> u16 {
    // The payload follows a header of even length, so the sums can be added separately.
    finish(add(add(add(0, pseudo), tcp), payload))
}
