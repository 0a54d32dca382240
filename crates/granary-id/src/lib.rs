//! The one type for a 32-byte ID: cmd/go's action IDs and output IDs.
//!
//! The `go` command names a cache entry by an action ID (a hash of the
//! action's inputs, opaque to granary) and its bytes by an output ID (their
//! SHA-256). Both are 32 bytes, and they travel through every layer: the
//! GOCACHEPROG protocol carries them in base64, the local tier and the remote
//! keys in hex, records and packs in raw bytes. Every crate uses [`Id`] for
//! both, so that no layer converts between look-alike types; the variable
//! name (`action`, `output`) says which role an ID plays.
//!
//! Architecture invariant: this crate knows only bytes, hex and SHA-256. It
//! has no I/O and depends on no other granary crate.

use std::fmt;

use sha2::Digest as _;

/// Length in bytes of an ID (SHA-256).
pub const ID_SIZE: usize = 32;

/// An action ID or an output ID. Shown as lower-case hex.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; ID_SIZE]);

impl Id {
    /// The SHA-256 of `data`: the output ID of those bytes.
    pub fn of(data: &[u8]) -> Id {
        Id(sha2::Sha256::digest(data).into())
    }

    /// Parses exactly 64 hex digits, either case.
    pub fn from_hex(text: impl AsRef<[u8]>) -> Option<Id> {
        let mut id = [0; ID_SIZE];
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(Id(id))
    }

    /// The ID in lower-case hex, as cmd/go writes it in file names.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl From<[u8; ID_SIZE]> for Id {
    fn from(bytes: [u8; ID_SIZE]) -> Id {
        Id(bytes)
    }
}

impl TryFrom<&[u8]> for Id {
    type Error = std::array::TryFromSliceError;

    fn try_from(bytes: &[u8]) -> Result<Id, Self::Error> {
        bytes.try_into().map(Id)
    }
}

impl AsRef<[u8]> for Id {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0; 2 * ID_SIZE];
        hex::encode_to_slice(self.0, &mut text).expect("the buffer fits the ID");
        f.write_str(std::str::from_utf8(&text).expect("hex is ASCII"))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_is_sha256() {
        // The SHA-256 of the empty string, as every tool prints it.
        assert_eq!(
            Id::of(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_an_id() {
        let id = Id::of(b"granary");
        assert_eq!(Id::from_hex(id.to_hex()), Some(id));
        assert_eq!(Id::from_hex(id.to_hex().to_uppercase()), Some(id));
        assert_eq!(Id::from_hex(&id.to_hex()[..62]), None);
        assert_eq!(Id::from_hex(format!("{id}00")), None);
        assert_eq!(Id::from_hex("g".repeat(64)), None);
        assert_eq!(format!("{id:?}"), format!("Id({id})"));
    }

    #[test]
    fn slices_of_other_lengths_are_refused() {
        assert_eq!(Id::try_from(&[7u8; 32][..]).unwrap(), Id([7; 32]));
        assert!(Id::try_from(&[7u8; 31][..]).is_err());
        assert!(Id::try_from(&[7u8; 33][..]).is_err());
    }
}
