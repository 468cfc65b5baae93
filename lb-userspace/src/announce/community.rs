//! BGP communities as MetalLB writes them: `65535:65282` (RFC 1997) and
//! `large:1:2:3` (RFC 8092), checked once and set on routes by BIRD.

use std::{fmt, str::FromStr};

#[derive(thiserror::Error, Debug, PartialEq, Eq)]
#[error(
    "{0:?} is not a community: write two numbers 0-65535 (65535:65282) or \
     large: and three numbers 0-4294967295 (large:64500:1:2)"
)]
pub struct CommunityError(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Community {
    Standard(u16, u16),
    Large(u32, u32, u32),
}

impl FromStr for Community {
    type Err = CommunityError;

    fn from_str(text: &str) -> Result<Self, CommunityError> {
        let error = || CommunityError(text.to_owned());
        if let Some(large) = text.strip_prefix("large:") {
            let parts: Vec<u32> = numbers(large).ok_or_else(error)?;
            return match parts[..] {
                [a, b, c] => Ok(Self::Large(a, b, c)),
                _ => Err(error()),
            };
        }
        match numbers::<u16>(text).ok_or_else(error)?[..] {
            [a, b] => Ok(Self::Standard(a, b)),
            _ => Err(error()),
        }
    }
}

/// The `:`-separated numbers of `text`, if all are numbers of type `N`.
fn numbers<N: FromStr>(text: &str) -> Option<Vec<N>> {
    text.split(':').map(|part| part.parse().ok()).collect()
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Standard(a, b) => write!(f, "{a}:{b}"),
            Self::Large(a, b, c) => write!(f, "large:{a}:{b}:{c}"),
        }
    }
}

impl Community {
    /// The BIRD filter statement that adds it to a route.
    pub fn bird_statement(&self) -> String {
        match self {
            Self::Standard(a, b) => format!("bgp_community.add(({a},{b}));"),
            Self::Large(a, b, c) => format!("bgp_large_community.add(({a},{b},{c}));"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_and_large_communities_parse_and_print_as_written() {
        for text in ["65535:65282", "0:0", "large:4294967295:1:2"] {
            assert_eq!(text.parse::<Community>().unwrap().to_string(), text);
        }
        assert_eq!(
            "65535:65282".parse::<Community>().unwrap().bird_statement(),
            "bgp_community.add((65535,65282));"
        );
        assert_eq!(
            "large:64500:1:2"
                .parse::<Community>()
                .unwrap()
                .bird_statement(),
            "bgp_large_community.add((64500,1,2));"
        );
    }

    #[test]
    fn values_out_of_range_or_of_the_wrong_shape_are_refused() {
        for bad in [
            "65536:1",
            "1:65536",
            "1",
            "1:2:3",
            "large:1:2",
            "large:1:2:4294967296",
            "NO_ADVERTISE",
            "",
            "-1:2",
        ] {
            assert_eq!(
                bad.parse::<Community>(),
                Err(CommunityError(bad.to_owned())),
                "{bad}"
            );
        }
    }
}
