//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).
//!
//! The one's complement sum is byte-order independent, so these work directly on
//! 16-bit words read from the packet in host order: no swapping in the data path.

/// Folds a 32-bit accumulator into 16 bits with end-around carry.
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Folds a 64-bit accumulator of 32-bit partial sums (what `bpf_csum_diff`
/// returns) into 16 bits with end-around carry.
#[inline(always)]
pub fn fold_wide(sum: u64) -> u16 {
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    fold(((sum & 0xffff_ffff) + (sum >> 32)) as u32)
}

/// The difference a set of field changes makes to a checksum, accumulated
/// as RFC 1624's `~m + m'` terms and folded once when applied: each change
/// costs a few additions, not a fold of its own, and the one difference an
/// address change makes serves every checksum covering that address (the
/// IPv4 header's and, through the pseudo-header, TCP's or UDP's).
///
/// The sum stays exact in 32 bits for up to 32,767 word changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u32);

impl Delta {
    /// Adds the change of one 16-bit word from `old` to `new`.
    #[inline(always)]
    #[must_use]
    pub fn u16(self, old: u16, new: u16) -> Self {
        Self(self.0 + u32::from(!old) + u32::from(new))
    }

    /// Adds the change of a 32-bit field (an IPv4 address) from `old` to `new`.
    #[inline(always)]
    #[must_use]
    pub fn u32(self, old: u32, new: u32) -> Self {
        self.u16(old as u16, new as u16)
            .u16((old >> 16) as u16, (new >> 16) as u16)
    }

    /// Adds the change of a 128-bit field (an IPv6 address) from `old` to `new`.
    #[inline(always)]
    #[must_use]
    pub fn u128(self, old: &[u32; 4], new: &[u32; 4]) -> Self {
        let mut delta = self;
        for i in 0..4 {
            delta = delta.u32(old[i], new[i]);
        }
        delta
    }

    /// `check` with these changes made to the data it covers (RFC 1624,
    /// equation 3: HC' = ~(~HC + ~m + m')).
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        // `fold`'s two rounds suffice for any 32-bit sum.
        !fold(u32::from(!check) + self.0)
    }
}

/// Checksum after one 16-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    Delta::default().u16(old, new).apply(check)
}

/// Checksum after a 32-bit field (an IPv4 address) changed from `old` to `new`.
#[inline(always)]
pub fn replace_u32(check: u16, old: u32, new: u32) -> u16 {
    Delta::default().u32(old, new).apply(check)
}

/// Checksum after a 128-bit field (an IPv6 address) changed from `old` to `new`.
#[inline(always)]
pub fn replace_u128(check: u16, old: &[u32; 4], new: &[u32; 4]) -> u16 {
    Delta::default().u128(old, new).apply(check)
}

/// TCP/UDP checksum after the address (in the pseudo-header) and the port of
/// one end changed: what every NAT rewrite does to an L4 checksum. IPv4
/// addresses come in their mapped form, whose equal upper words cancel out.
#[inline(always)]
pub fn replace_address_and_port(
    check: u16,
    old_ip: &[u32; 4],
    new_ip: &[u32; 4],
    old_port: u16,
    new_port: u16,
) -> u16 {
    Delta::default()
        .u128(old_ip, new_ip)
        .u16(old_port, new_port)
        .apply(check)
}

/// One's complement sum of `data` as big-endian words (odd length padded with zero).
pub fn sum_be(data: &[u8], initial: u32) -> u32 {
    let mut sum = initial;
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([word[0], word[1]])));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = words.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// The Internet checksum of `data`, big-endian: a header carrying its own correct
/// checksum sums to zero.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(sum_be(data, 0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn wide_sums_fold_as_their_words_do() {
        // Partial sums congruent to their words modulo 0xffff (2^16 is 1).
        let partials = [0xffff_ffffu64, 0x1_0000_0001, 0x8000_8000, 0xdead_beef];
        let total: u64 = partials.iter().sum();
        let by_words = partials
            .iter()
            .map(|p| (p & 0xffff) + ((p >> 16) & 0xffff) + (p >> 32))
            .sum::<u64>();
        assert_eq!(
            u64::from(super::fold_wide(total)) % 0xffff,
            by_words % 0xffff
        );
        assert_eq!(super::fold_wide(0x1_2345_6789), super::fold(0x2345_678a));
    }

    use super::*;

    // An IPv4 header (RFC 1071 style example) with its checksum at bytes 10..12.
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    fn read_ne(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    #[test]
    fn full_checksum_of_a_valid_header_is_zero() {
        assert_eq!(internet_checksum(&HEADER), 0);
        let mut zeroed = HEADER;
        zeroed[10] = 0;
        zeroed[11] = 0;
        assert_eq!(internet_checksum(&zeroed), 0xb861);
    }

    #[test]
    fn incremental_u32_matches_recomputation() {
        for new_dst in [
            [10, 0, 0, 1],
            [255, 255, 255, 255],
            [0, 0, 0, 0],
            [192, 168, 0, 199],
        ] {
            let mut h = HEADER;
            let old = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
            let new = u32::from_ne_bytes(new_dst);
            let check = replace_u32(read_ne(&h, 10), old, new);
            h[16..20].copy_from_slice(&new_dst);
            h[10..12].copy_from_slice(&check.to_ne_bytes());
            assert_eq!(internet_checksum(&h), 0, "dst {new_dst:?}");
        }
    }

    #[test]
    fn incremental_u16_matches_recomputation() {
        for new_word in [0u16, 1, 0x7fff, 0xffff, 0x1234] {
            let mut h = HEADER;
            // Change the identification field (bytes 4..6).
            let old = read_ne(&h, 4);
            let new = new_word.to_be();
            let check = replace_u16(read_ne(&h, 10), old, new);
            h[4..6].copy_from_slice(&new.to_ne_bytes());
            h[10..12].copy_from_slice(&check.to_ne_bytes());
            assert_eq!(internet_checksum(&h), 0, "word {new_word:#x}");
        }
    }

    #[test]
    fn incremental_u128_matches_recomputation() {
        // An IPv6 pseudo-header-like block: two addresses and some payload.
        let mut block = [0u8; 40];
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i * 37 % 251) as u8;
        }
        let check = internet_checksum(&block);
        let words = |b: &[u8]| -> [u32; 4] {
            core::array::from_fn(|i| {
                u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
            })
        };
        let old = words(&block[16..32]);
        let new = words(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0, 9,
        ]);
        let updated = replace_u128(check.to_be(), &old, &new);
        for (chunk, word) in block[16..32].chunks_exact_mut(4).zip(new) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        assert_eq!(u16::from_be(updated), internet_checksum(&block));
    }

    #[test]
    fn one_delta_serves_several_changes() {
        // The source address (bytes 12..16) and the identification (4..6)
        // change together, folded once.
        let mut h = HEADER;
        let old_src = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
        let new_src = u32::from_ne_bytes([10, 1, 0, 11]);
        let (old_id, new_id) = (read_ne(&h, 4), 0xbeefu16.to_be());
        let check = Delta::default()
            .u32(old_src, new_src)
            .u16(old_id, new_id)
            .apply(read_ne(&h, 10));
        h[12..16].copy_from_slice(&new_src.to_ne_bytes());
        h[4..6].copy_from_slice(&new_id.to_ne_bytes());
        h[10..12].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(internet_checksum(&h), 0);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum_be(&[0x12], 0), 0x1200);
        assert_eq!(internet_checksum(&[0xff, 0xff]), 0);
    }
}
