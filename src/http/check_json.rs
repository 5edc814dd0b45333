//! The resource-check answer's JSON, written straight from the decision: byte for byte what
//! serde_json writes for [`super::wire::ResourceCheck`] (the documented shape, which lease
//! bodies embed), without building that struct (copies of its strings) or escaping its field
//! names on every answer. Numbers still go through serde_json, and so does any string with
//! something to escape, so both are formatted and escaped by the same code. The tests compare the two on decisions of every kind.

use std::cell::RefCell;

use serde::Serialize;

use crate::policy::admission::{CurrentUsage, ResourceCheck};
use crate::units::{round1, round2};

/// The JSON of `c`, as `serde_json::to_vec(&wire::ResourceCheck::from(c))` writes it.
pub(crate) fn to_vec(c: &ResourceCheck) -> Result<Vec<u8>, serde_json::Error> {
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        write(c, &mut Out(scratch))?;
        // Exactly its length: a vector with room to spare becomes `Bytes` through a second
        // allocation.
        let json = scratch.to_vec();
        if scratch.capacity() > SCRATCH_KEPT {
            *scratch = Vec::new();
        }
        Ok(json)
    })
}

thread_local! {
    /// Where each thread writes answers (about 600 bytes, a few KiB with recommendations).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The largest scratch space a thread keeps between answers.
const SCRATCH_KEPT: usize = 64 * 1024;

fn write(c: &ResourceCheck, out: &mut Out<'_>) -> Result<(), serde_json::Error> {
    let (s, u) = (&c.resource_status, &c.current_usage);
    out.key(b"{\"can_start_generation\":", &c.can_start_generation)?;
    out.key(b",\"resource_status\":{\"vram_available\":", &s.vram_available)?;
    out.key(b",\"cpu_available\":", &s.cpu_available)?;
    out.key(b",\"ram_available\":", &s.ram_available)?;
    if let Some(free) = s.concurrency_available {
        out.key(b",\"concurrency_available\":", &free)?;
    }
    out.raw(b"},\"current_usage\":");
    usage(u, out)?;
    out.strs(b",\"blocking_issues\":", &c.blocking_issues)?;
    out.str(b",\"message\":", &c.message)?;
    out.strs(b",\"recommendations\":", &c.recommendations)?;
    match &c.gpu {
        None => out.raw(b",\"gpu\":null"),
        Some(g) => {
            out.key(b",\"gpu\":{\"index\":", &g.index)?;
            out.str(b",\"uuid\":", &g.uuid)?;
            out.key(b",\"free_gb\":", &g.free_gb)?;
            out.key(b",\"projected_percent\":", &g.projected_percent)?;
            out.raw(b"}");
        }
    }
    out.key(b",\"vram_required_gb\":", &c.vram_required_gb)?;
    out.str(b",\"estimate_source\":", c.estimate_source)?;
    out.key(b",\"estimate_samples\":", &c.estimate_samples)?;
    let e = &c.estimate;
    out.str(b",\"estimate\":{\"workload\":", &e.workload)?;
    out.key(b",\"width\":", &e.geometry.width)?;
    out.key(b",\"height\":", &e.geometry.height)?;
    out.key(b",\"frames\":", &e.geometry.frames)?;
    out.key(b",\"vram_required_gb\":", &round2(e.gb))?;
    out.str(b",\"source\":", c.estimate_source)?;
    out.key(b",\"samples\":", &c.estimate_samples)?;
    out.raw(b"}");
    if !c.ranks.is_empty() {
        out.raw(b",\"gpus\":[");
        for (i, r) in c.ranks.iter().enumerate() {
            out.key(if i == 0 { b"{\"rank\":" } else { b",{\"rank\":" }, &r.rank)?;
            out.key(b",\"index\":", &r.index)?;
            out.str(b",\"uuid\":", &r.uuid)?;
            out.key(b",\"vram_required_gb\":", &round2(r.need_gb))?;
            out.key(b",\"free_gb\":", &round2(r.free_gb))?;
            out.key(b",\"projected_percent\":", &round1(r.projected * 100.0))?;
            out.raw(b"}");
        }
        out.raw(b"]");
    }
    out.raw(b"}");
    Ok(())
}

/// `u` as an object. Every answer on one sample shows much the same usage, so each thread
/// keeps the last one it wrote and copies it when `u` is the same again.
fn usage(u: &CurrentUsage, out: &mut Out<'_>) -> Result<(), serde_json::Error> {
    LAST_USAGE.with_borrow_mut(|last| {
        if let Some((_, json)) = last.as_ref().filter(|(kept, _)| kept == u) {
            out.raw(json);
            return Ok(());
        }
        let start = out.0.len();
        out.key(b"{\"vram_percent\":", &u.vram_percent)?;
        out.key(b",\"cpu_percent\":", &u.cpu_percent)?;
        out.key(b",\"ram_percent\":", &u.ram_percent)?;
        if let Some(active) = u.active_generations {
            out.key(b",\"active_generations\":", &active)?;
        }
        out.raw(b"}");
        *last = Some((u.clone(), out.0[start..].to_vec()));
        Ok(())
    })
}

/// Whether JSON escapes any byte of `s`: a quote, a backslash or a control character.
fn has_escapes(s: &[u8]) -> bool {
    let escaped = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    // Sixteen bytes at a time, without stopping early inside a block: the compiler checks each
    // block in a few vector instructions.
    let mut blocks = s.chunks_exact(16);
    let in_blocks = blocks.by_ref().any(|block| {
        let block: &[u8; 16] = block.try_into().unwrap_or(&[0x20; 16]);
        block.iter().fold(false, |any, &b| any | escaped(b))
    });
    in_blocks || blocks.remainder().iter().any(|&b| escaped(b))
}

thread_local! {
    /// The last usage each thread wrote, and its JSON.
    static LAST_USAGE: RefCell<Option<(CurrentUsage, Vec<u8>)>> = const { RefCell::new(None) };
}

/// The JSON being written.
struct Out<'a>(&'a mut Vec<u8>);

impl Out<'_> {
    fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// `text` (the punctuation and a field's name, already JSON), then `value` as serde_json
    /// writes it.
    fn key<T: Serialize + ?Sized>(&mut self, text: &[u8], value: &T) -> Result<(), serde_json::Error> {
        self.raw(text);
        serde_json::to_writer(&mut *self.0, value)
    }

    /// `text`, then the string `value`: copied between quotes when it has nothing JSON escapes
    /// (a quote, a backslash, a control character: the sentences vramguard writes never do),
    /// else escaped by serde_json.
    fn str(&mut self, text: &[u8], value: &str) -> Result<(), serde_json::Error> {
        if has_escapes(value.as_bytes()) {
            return self.key(text, value);
        }
        self.raw(text);
        self.raw(b"\"");
        self.raw(value.as_bytes());
        self.raw(b"\"");
        Ok(())
    }

    /// `text`, then the strings `values` as a JSON array.
    fn strs(&mut self, text: &[u8], values: &[String]) -> Result<(), serde_json::Error> {
        self.raw(text);
        self.raw(b"[");
        for (i, v) in values.iter().enumerate() {
            self.str(if i == 0 { b"" } else { b"," }, v)?;
        }
        self.raw(b"]");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::wire;
    use crate::policy::admission::{ChosenGpu, JobEstimate, Reason, ResourceStatus};
    use crate::policy::gang::RankPlace;
    use crate::policy::phases::Geometry;

    fn same(c: &ResourceCheck) {
        let serde = serde_json::to_vec(&wire::ResourceCheck::from(c)).unwrap();
        let ours = to_vec(c).unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(serde).unwrap());
    }

    fn check() -> ResourceCheck {
        ResourceCheck {
            can_start_generation: true,
            resource_status: ResourceStatus {
                vram_available: true,
                cpu_available: true,
                ram_available: true,
                concurrency_available: Some(true),
            },
            current_usage: CurrentUsage {
                vram_percent: 12.5,
                cpu_percent: Some(3.0),
                ram_percent: Some(41.2),
                active_generations: Some(1),
            },
            blocking_issues: vec![],
            message: "Resources available for generation".into(),
            recommendations: vec![],
            gpu: Some(ChosenGpu {
                index: 3,
                uuid: "GPU-00000000-0000-0000-0000-000000000003".to_owned(),
                free_gb: 70.02,
                projected_percent: 33.3,
            }),
            vram_required_gb: 19.76,
            estimate_source: "model",
            estimate_samples: 0,
            estimate: JobEstimate {
                workload: "default".to_owned(),
                geometry: Geometry { width: 1280, height: 704, frames: 121 },
                gb: 19.756_123,
            },
            required_gb: 19.756_123,
            ranks: vec![],
            gang_fitting: vec![],
            reasons: vec![],
            lasting: false,
        }
    }

    #[test]
    fn an_admission_is_written_as_serde_writes_it() {
        let mut c = check();
        same(&c);
        // The usage written last is copied only while it is the same.
        same(&c);
        c.current_usage.vram_percent = 12.6;
        same(&c);
        c.current_usage.active_generations = None;
        same(&c);
    }

    #[test]
    fn a_refusal_with_every_optional_part_is_written_as_serde_writes_it() {
        let mut c = check();
        c.refuse(Reason::Vram, "GPU 3 has \"only\" 1.5 GB free\n\u{1}; ½ of it is ∞".to_owned());
        c.refuse(Reason::Ram, "nothing to escape: / \u{7f} é".to_owned());
        c.recommendations = vec![
            "Enable offload: saves 12.3 GB".to_owned(),
            "tab\there \\ and there".to_owned(),
            String::new(),
            "ends in a quote\"".to_owned(),
            "a backslash \\ alone".to_owned(),
            "\u{1f}".to_owned(),
        ];
        c.resource_status.concurrency_available = None;
        c.current_usage =
            CurrentUsage { vram_percent: 0.0, cpu_percent: None, ram_percent: None, active_generations: None };
        c.gpu = None;
        c.estimate_source = "observed";
        c.estimate_samples = 12;
        c.estimate.workload = "wan22 \"t2v\"".to_owned();
        c.estimate.gb = 1e-7;
        c.vram_required_gb = 1024.0;
        same(&c);
        c.estimate.gb = f64::NAN;
        c.vram_required_gb = f64::INFINITY;
        same(&c);
    }

    /// Every byte JSON escapes is found wherever it lies, in a block or after the last one.
    #[test]
    fn escapes_are_found_anywhere() {
        for len in [0, 1, 15, 16, 17, 40] {
            let plain = vec![b'a'; len];
            assert!(!has_escapes(&plain));
            for at in 0..len {
                for b in (0..0x20).chain([b'"', b'\\']) {
                    let mut s = plain.clone();
                    s[at] = b;
                    assert!(has_escapes(&s), "{b:#x} at {at} of {len}");
                }
                for b in [0x20, b'/', 0x7f, 0x80, 0xff] {
                    let mut s = plain.clone();
                    s[at] = b;
                    assert!(!has_escapes(&s), "{b:#x} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn a_gang_is_written_as_serde_writes_it() {
        let mut c = check();
        c.ranks = (0..4)
            .map(|rank| RankPlace {
                rank,
                index: 7 - rank,
                uuid: format!("GPU-{rank}"),
                need_gb: 40.912_3,
                free_gb: 47.5 - f64::from(rank) / 3.0,
                projected: 0.876_54,
            })
            .collect();
        same(&c);
        c.ranks.truncate(1);
        same(&c);
    }
}
