//! Which images this process takes when a sweep is split over N processes (`--shard K/N`, or a
//! Slurm array's own numbering): a stable hash of each image's relative path, so that every
//! process agrees without talking, and adding files moves no other file to another shard.

use crate::error::{Error, Result};

/// Shard `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `K/N` with 1 ≤ K ≤ N, as node's `--test-shard` and nextest's `--partition count:K/N`;
    /// `slurm` reads the array job's `SLURM_ARRAY_TASK_ID`, `_MIN` and `_COUNT`.
    pub fn parse(text: &str) -> Result<Shard> {
        if text.eq_ignore_ascii_case("slurm") {
            return Self::from_slurm(|name| std::env::var(name).ok());
        }
        let usage = |why: &str| {
            Error::Usage(format!("--shard {text}: {why}; give K/N with 1 ≤ K ≤ N (e.g. 1/4), or `slurm`"))
        };
        let (k, n) = text.split_once('/').ok_or_else(|| usage("not of the form K/N"))?;
        let k: usize = k.trim().parse().map_err(|_| usage("K is not a number"))?;
        let n: usize = n.trim().parse().map_err(|_| usage("N is not a number"))?;
        if n == 0 || k == 0 || k > n {
            return Err(usage(if k == 0 { "shards count from 1" } else { "K must be between 1 and N" }));
        }
        Ok(Shard { index: k, count: n })
    }

    /// A Slurm array job `--array=MIN-MAX`: task `ID` of `COUNT` tasks takes shard
    /// `ID − MIN + 1` of `COUNT`.
    pub fn from_slurm(var: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        let read = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| Error::Usage(format!("--shard slurm: {name}={v} is not a number")))
                })
                .transpose()
        };
        let id = read("SLURM_ARRAY_TASK_ID")?.ok_or_else(|| {
            Error::Usage(
                "--shard slurm: SLURM_ARRAY_TASK_ID is not set (run it as a job array: sbatch --array=…)"
                    .into(),
            )
        })?;
        let count = read("SLURM_ARRAY_TASK_COUNT")?
            .ok_or_else(|| Error::Usage("--shard slurm: SLURM_ARRAY_TASK_COUNT is not set".into()))?;
        let min = read("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let index = id.checked_sub(min).map(|i| i + 1).filter(|&i| i <= count).ok_or_else(|| {
            Error::Usage(format!(
                "--shard slurm: task {id} is not among {count} tasks from {min} (arrays with a step are not supported)"
            ))
        })?;
        Ok(Shard { index, count })
    }

    pub fn takes(&self, name: &str) -> bool {
        (stable_hash(name) % self.count as u64) as usize == self.index - 1
    }
}

/// FNV-1a, 64 bits: fixed by its definition, so the same on every machine, build and Rust version
/// (std's hasher promises none of that).
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_refuse_what_makes_no_sense() {
        assert_eq!(Shard::parse("2/4").unwrap(), Shard { index: 2, count: 4 });
        for bad in ["0/4", "5/4", "1/0", "1", "a/b"] {
            let e = Shard::parse(bad).unwrap_err().to_string();
            assert!(e.contains("K/N"), "{bad}: {e}");
        }
        assert!(Shard::parse("0/4").unwrap_err().to_string().contains("count from 1"));
    }

    #[test]
    fn slurm_numbering_becomes_a_shard() {
        let env = |id: &str, min: Option<&str>, count: &str| {
            let (id, min, count) = (id.to_string(), min.map(String::from), count.to_string());
            move |name: &str| match name {
                "SLURM_ARRAY_TASK_ID" => Some(id.clone()),
                "SLURM_ARRAY_TASK_MIN" => min.clone(),
                "SLURM_ARRAY_TASK_COUNT" => Some(count.clone()),
                _ => None,
            }
        };
        assert_eq!(Shard::from_slurm(env("0", Some("0"), "4")).unwrap(), Shard { index: 1, count: 4 });
        assert_eq!(Shard::from_slurm(env("4", Some("1"), "4")).unwrap(), Shard { index: 4, count: 4 });
        assert!(Shard::from_slurm(env("9", Some("1"), "4")).is_err());
        assert!(Shard::from_slurm(|_| None).unwrap_err().to_string().contains("SLURM_ARRAY_TASK_ID"));
    }

    /// Every name lands in exactly one shard, and the hash is the published FNV-1a.
    #[test]
    fn every_image_is_in_exactly_one_shard() {
        assert_eq!(stable_hash(""), 0xcbf29ce484222325);
        assert_eq!(stable_hash("a"), 0xaf63dc4c8601ec8c);
        let shards: Vec<Shard> = (1..=3).map(|k| Shard { index: k, count: 3 }).collect();
        for i in 0..300 {
            let name = format!("class{}/img{i}.jpg", i % 7);
            assert_eq!(shards.iter().filter(|s| s.takes(&name)).count(), 1);
        }
    }
}
