//! Shards of a database split by user, as Vitess splits a keyspace: each user's keyspace id is
//! the xxhash64 of their id (Vitess's `xxhash` vindex), and each shard holds a range of keyspace
//! ids named by its hexadecimal bounds (`-80`, `80-c0`, `c0-`). Charges are grouped into batches
//! per shard with this, so a batch's transaction never spans two shards (deploy.md, "Sharding
//! MySQL by user").

use std::cmp::Ordering;

/// A user's keyspace id as Vitess's `xxhash` vindex computes it: the xxhash64 (seed 0) of the
/// id's bytes, least significant byte first.
pub fn keyspace_id(user_id: &str) -> [u8; 8] {
    xxhash64(user_id.as_bytes()).to_le_bytes()
}

/// The shards charges are grouped by: none configured is one database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shards {
    ranges: Vec<KeyRange>,
}

impl Shards {
    /// The shards named as Vitess names them; together they must cover every keyspace id once
    /// (no gap, no overlap). An empty list (blank names are left out) is one database.
    pub fn parse(names: &[String]) -> Result<Shards, String> {
        let mut ranges = names
            .iter()
            .map(|name| name.trim())
            .filter(|name| !name.is_empty())
            .map(KeyRange::parse)
            .collect::<Result<Vec<_>, _>>()?;
        ranges.sort_by(|a, b| a.start.cmp(&b.start));
        let mut next: Vec<u8> = Vec::new();
        for (index, range) in ranges.iter().enumerate() {
            if range.start != next {
                let why = if range.start < next {
                    "overlaps"
                } else {
                    "leaves a gap before"
                };
                return Err(format!("shard {} {why} the one before it", range.name));
            }
            match &range.end {
                Some(end) => next = end.clone(),
                None if index + 1 == ranges.len() => return Ok(Shards { ranges }),
                None => return Err(format!("shard {} is not the last one", range.name)),
            }
        }
        match ranges.last() {
            None => Ok(Shards::default()),
            Some(last) => Err(format!(
                "shard {} leaves the end of the range uncovered",
                last.name
            )),
        }
    }

    /// How many shards (1 without any configured).
    pub fn count(&self) -> usize {
        self.ranges.len().max(1)
    }

    /// The index of the shard that holds `user_id`'s rows, among [`Shards::count`].
    pub fn of(&self, user_id: &str) -> usize {
        if self.ranges.len() <= 1 {
            return 0;
        }
        let id = keyspace_id(user_id);
        self.ranges
            .iter()
            .position(|range| range.holds(&id))
            .unwrap_or(0)
    }

    /// The name of the shard at `index` (`-` for one database).
    pub fn name(&self, index: usize) -> &str {
        self.ranges
            .get(index)
            .map_or("-", |range| range.name.as_str())
    }
}

/// Keyspace ids from `start` (inclusive) to `end` (exclusive; `None`: to the end), compared
/// byte by byte as Vitess compares them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyRange {
    name: String,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl KeyRange {
    /// `start-end`, each an even number of hexadecimal digits or empty (`-` is the whole range).
    fn parse(name: &str) -> Result<KeyRange, String> {
        let refused = || format!("shard {name:?} must be <start>-<end> in hexadecimal (-80, 80-)");
        let (start, end) = name.split_once('-').ok_or_else(refused)?;
        let bound = |hex: &str| decode_hex(hex).ok_or_else(refused);
        let (start, end) = (bound(start)?, bound(end)?);
        let end = (!end.is_empty()).then_some(end);
        if end
            .as_ref()
            .is_some_and(|end| end.as_slice() <= start.as_slice())
        {
            return Err(format!("shard {name:?} ends before it starts"));
        }
        Ok(KeyRange {
            name: name.to_owned(),
            start,
            end,
        })
    }

    fn holds(&self, id: &[u8]) -> bool {
        id.cmp(&self.start) != Ordering::Less && self.end.as_deref().is_none_or(|end| id < end)
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).ok())
        .collect()
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// XXH64 with seed 0, as Vitess's `xxhash` vindex computes it.
fn xxhash64(input: &[u8]) -> u64 {
    let word = |bytes: &[u8]| u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    let mut rest = input;
    let mut hash = if input.len() >= 32 {
        let mut lanes = [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)];
        while rest.len() >= 32 {
            for (lane, chunk) in lanes.iter_mut().zip(rest[..32].chunks_exact(8)) {
                *lane = round(*lane, word(chunk));
            }
            rest = &rest[32..];
        }
        let [a, b, c, d] = lanes;
        let mut hash = a
            .rotate_left(1)
            .wrapping_add(b.rotate_left(7))
            .wrapping_add(c.rotate_left(12))
            .wrapping_add(d.rotate_left(18));
        for lane in lanes {
            hash = (hash ^ round(0, lane)).wrapping_mul(P1).wrapping_add(P4);
        }
        hash
    } else {
        P5
    };
    hash = hash.wrapping_add(input.len() as u64);
    while rest.len() >= 8 {
        hash ^= round(0, word(rest));
        hash = hash.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        let half = u32::from_le_bytes(rest[..4].try_into().unwrap_or([0; 4]));
        hash ^= u64::from(half).wrapping_mul(P1);
        hash = hash.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &byte in rest {
        hash ^= u64::from(byte).wrapping_mul(P5);
        hash = hash.rotate_left(11).wrapping_mul(P1);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(P2);
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(P3);
    hash ^ (hash >> 32)
}

fn round(lane: u64, input: u64) -> u64 {
    lane.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(names: &[&str]) -> Result<Shards, String> {
        Shards::parse(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn xxhash64_matches_the_reference() {
        let hundred: Vec<u8> = (0..100).collect();
        let cases: [(&[u8], u64); 7] = [
            (b"", 0xEF46_DB37_51D8_E999),
            (b"a", 0xD24E_C4F1_A98C_6E5B),
            (b"abc", 0x44BC_2CF5_AD77_0999),
            (b"dev-42", 0xE7AC_1373_31BF_FCBB),
            (b"user-0000001", 0xA619_F94D_49D6_7D65),
            (
                b"Nobody inspects the spammish repetition",
                0xFBCE_A83C_8A37_8BF1,
            ),
            (&hundred, 0x6AC1_E580_3216_6597),
        ];
        for (input, expected) in cases {
            assert_eq!(xxhash64(input), expected, "{input:?}");
        }
    }

    #[test]
    fn keyspace_ids_are_those_of_vitess() {
        let hex = |id: [u8; 8]| id.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(keyspace_id("")), "99e9d85137db46ef");
        assert_eq!(hex(keyspace_id("test1")), "d01ab7e4d6978f0b");
        assert_eq!(hex(keyspace_id("dev-42")), "bbfcbf317313ace7");
    }

    #[test]
    fn each_user_falls_in_the_range_of_its_keyspace_id() {
        let four = shards(&["c0-", "-40", "80-c0", "40-80"]).unwrap();
        assert_eq!(four.count(), 4);
        // The keyspace id of dev-42 starts bb, that of user-0000001 65.
        assert_eq!(four.name(four.of("dev-42")), "80-c0");
        assert_eq!(four.name(four.of("user-0000001")), "40-80");
        let two = shards(&["-80", "80-"]).unwrap();
        assert_eq!(two.name(two.of("dev-42")), "80-");
        let mut seen = [0usize; 4];
        for n in 0..4_000 {
            let user = format!("user-{n}");
            let shard = four.of(&user);
            let id = keyspace_id(&user);
            assert_eq!(shard, usize::from(id[0] / 0x40), "{user}");
            seen[shard] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }

    #[test]
    fn one_database_is_one_shard() {
        for one in [
            shards(&[]).unwrap(),
            shards(&["-"]).unwrap(),
            shards(&[""]).unwrap(),
        ] {
            assert_eq!(one.count(), 1);
            assert_eq!(one.of("dev-42"), 0);
        }
    }

    #[test]
    fn ranges_must_cover_every_keyspace_id_once() {
        for bad in [
            &["-80"][..],
            &["80-"],
            &["-80", "90-"],
            &["-80", "70-"],
            &["-80", "80-c0"],
            &["-", "80-"],
            &["80"],
            &["-8", "8-"],
            &["-zz", "zz-"],
            &["-80", "80-40", "40-"],
        ] {
            assert!(shards(bad).is_err(), "{bad:?}");
        }
        assert!(shards(&["-4000", "4000-80", "80-"]).is_ok());
    }
}
