//! Leases and observed peaks. Lease writes join the open batch (group commit, see
//! [`Store::commit_batch`]); observations are written with the lease ends that produce them.

use std::collections::BTreeMap;

use rusqlite::params;

use super::{Store, StoreError};
use crate::config::{Optimization, Quantization};
use crate::leases::{GangTie, Lease, Outcome};
use crate::policy::estimate::{EstimateKey, Peak};
use crate::policy::phases::Geometry;

/// The lease fields kept as JSON in `leases.details`.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseDetails {
    #[serde(default)]
    pids: Vec<u32>,
    // Stores written before the baseline left out attributed processes used the old name; the
    // old figure is larger, which only makes the reservation count longer (fail closed).
    #[serde(default, alias = "gpu_used_at_grant_gb")]
    unattributed_used_at_grant_gb: Option<f64>,
    #[serde(default)]
    vram_peak_gb: Option<f64>,
    #[serde(default)]
    overrun: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid_namespace: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pid_start_times: BTreeMap<u32, u64>,
    // Leases of wave 2 and before: counted by their pids whenever they had some.
    #[serde(default)]
    seen: bool,
    grant: Option<EstimateKey>,
    // Leases taken before tokens had names have no owner: only an admin acts on them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    // One rank of a gang; leases before gangs had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gang: Option<GangTie>,
}

/// The lease fields kept as JSON.
fn details(l: &Lease) -> String {
    serde_json::to_string(&LeaseDetails {
        pids: l.pids.clone(),
        unattributed_used_at_grant_gb: l.unattributed_used_at_grant_gb,
        vram_peak_gb: l.vram_peak_gb,
        overrun: l.overrun,
        pid_namespace: l.pid_namespace,
        pid_start_times: l.pid_start_times.clone(),
        seen: l.seen,
        grant: Some(l.grant.clone()),
        owner: l.owner.clone(),
        gang: l.gang.clone(),
    })
    .expect("lease details serialise")
}

impl Store {
    /// Every stored lease, live or not (the caller reaps).
    pub fn load_leases(&self) -> Result<Vec<Lease>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, gpu_index, gpu_uuid, vram_reserved_gb, granted_at, expires_at, ttl_seconds, client, details
                 FROM leases",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                let details: Option<String> = r.get(8)?;
                Ok((
                    Lease {
                        id: r.get(0)?,
                        gpu_index: r.get(1)?,
                        gpu_uuid: r.get(2)?,
                        vram_reserved_gb: r.get(3)?,
                        granted_at: r.get(4)?,
                        expires_at: r.get(5)?,
                        ttl_seconds: r.get(6)?,
                        client: r.get(7)?,
                        pids: Vec::new(),
                        pid_namespace: None,
                        pid_start_times: BTreeMap::new(),
                        seen: false,
                        unattributed_used_at_grant_gb: None,
                        vram_peak_gb: None,
                        overrun: false,
                        grant: EstimateKey::default(),
                        owner: None,
                        gang: None,
                    },
                    details,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (mut lease, details) = row.map_err(|e| self.sql(e))?;
            if let Some(text) = details {
                let d: LeaseDetails = serde_json::from_str(&text).map_err(|e| StoreError::Invalid {
                    path: self.path.clone(),
                    key: format!("lease {}", lease.id),
                    message: e.to_string(),
                })?;
                lease.pids = d.pids;
                lease.pid_namespace = d.pid_namespace;
                lease.pid_start_times = d.pid_start_times;
                lease.seen = d.seen;
                lease.unattributed_used_at_grant_gb = d.unattributed_used_at_grant_gb;
                lease.vram_peak_gb = d.vram_peak_gb;
                lease.overrun = d.overrun;
                lease.owner = d.owner;
                lease.gang = d.gang;
                if let Some(g) = d.grant {
                    lease.grant = g;
                }
            }
            out.push(lease);
        }
        Ok(out)
    }

    /// Inserts or updates a lease in the open batch (durable once [`Store::commit_batch`] ran).
    pub fn put_lease(&mut self, l: &Lease) -> Result<(), StoreError> {
        self.put_leases(std::slice::from_ref(l))
    }

    /// Inserts or updates leases in the open batch, all or none (a savepoint: a gang's ranks are
    /// never stored in part).
    pub fn put_leases(&mut self, leases: &[Lease]) -> Result<(), StoreError> {
        let rows: Vec<(&Lease, String)> = leases.iter().map(|l| (l, details(l))).collect();
        self.join_batch()?;
        self.write_in_batch(|conn| {
            let tx = conn.savepoint()?;
            for (l, details) in &rows {
                tx.prepare_cached(
                    "INSERT INTO leases (id, gpu_index, gpu_uuid, vram_reserved_gb, granted_at, expires_at, ttl_seconds, client, details)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT(id) DO UPDATE SET expires_at = excluded.expires_at, ttl_seconds = excluded.ttl_seconds,
                                                   details = excluded.details",
                )?
                .execute(params![l.id, l.gpu_index, l.gpu_uuid, l.vram_reserved_gb, l.granted_at, l.expires_at, l.ttl_seconds, l.client, details])?;
            }
            tx.commit()
        })
    }

    /// Ends leases in the open batch: deletes them and records the observations their ends
    /// produced, so a release and what was learned from it are durable together (a savepoint
    /// keeps a failure half-way from leaving half of it in the batch).
    pub fn end_leases(&mut self, ids: &[String], observations: &[Observation]) -> Result<(), StoreError> {
        self.join_batch()?;
        self.write_in_batch(|conn| {
            // A savepoint: a failure half-way leaves nothing of this end in the batch.
            let tx = conn.savepoint()?;
            for id in ids {
                tx.prepare_cached("DELETE FROM leases WHERE id = ?1")?.execute(params![id])?;
            }
            for o in observations {
                tx.prepare_cached(
                    "INSERT INTO observations (workload, quantization, enable_offload, vae_tile_size, model_loaded,
                                               peak_vram_gb, source, recorded_at, outcome, vae_tiling, width,
                                               height, frames, used)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )?
                .execute(params![
                    o.key.workload,
                    quantization_name(o.key.settings.quantization),
                    o.key.settings.enable_offload,
                    o.key.settings.vae_tile_size,
                    o.key.model_loaded,
                    o.peak_vram_gb,
                    o.source,
                    o.recorded_at,
                    o.outcome.as_str(),
                    o.key.settings.vae_tiling,
                    o.key.geometry.map(|g| g.width),
                    o.key.geometry.map(|g| g.height),
                    o.key.geometry.map(|g| g.frames),
                    o.used
                ])?;
            }
            tx.commit()
        })
    }

    /// Keeps, in the open batch, the newest `per_key` observations of each key and the newest
    /// `cap` in all: estimates read only the newest `learning.window` of a key, and the table
    /// must not grow with every release for ever.
    pub fn prune_observations(&mut self, per_key: u32, cap: u32) -> Result<(), StoreError> {
        self.join_batch()?;
        self.write_in_batch(|conn| {
            conn.prepare_cached(
                "DELETE FROM observations WHERE id IN (
                     SELECT id FROM (
                         SELECT id, ROW_NUMBER() OVER (
                             PARTITION BY workload, quantization, enable_offload, vae_tile_size, vae_tiling,
                                          model_loaded, width, height, frames
                             ORDER BY recorded_at DESC, id DESC) AS newest
                         FROM observations)
                     WHERE newest > ?1)",
            )?
            .execute(params![per_key])?;
            conn.prepare_cached(
                "DELETE FROM observations WHERE id NOT IN (
                     SELECT id FROM observations ORDER BY recorded_at DESC, id DESC LIMIT ?1)",
            )?
            .execute(params![cap])
            .map(drop)
        })
    }

    /// Every observation, newest first.
    pub fn load_observations(&self) -> Result<Vec<Observation>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT workload, quantization, enable_offload, vae_tile_size, model_loaded, peak_vram_gb, source,
                        recorded_at, outcome, vae_tiling, width, height, frames, used
                 FROM observations ORDER BY recorded_at DESC, id DESC",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                let q: String = r.get(1)?;
                Ok(Observation {
                    key: EstimateKey {
                        workload: r.get(0)?,
                        settings: Optimization {
                            quantization: quantization_from(&q),
                            enable_offload: r.get(2)?,
                            vae_tile_size: r.get(3)?,
                            vae_tiling: r.get(9)?,
                            ..Optimization::default()
                        },
                        model_loaded: r.get(4)?,
                        // Observations from before sizes were asked for are of the profile's own.
                        geometry: match (r.get(10)?, r.get(11)?, r.get(12)?) {
                            (Some(width), Some(height), Some(frames)) => Some(Geometry { width, height, frames }),
                            _ => None,
                        },
                    },
                    peak_vram_gb: r.get(5)?,
                    source: r.get(6)?,
                    // Observations from before outcomes were all of finished runs.
                    outcome: Outcome::parse(&r.get::<_, String>(8)?).unwrap_or(Outcome::Ok),
                    used: r.get(13)?,
                    recorded_at: r.get(7)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.sql(e))
    }

    /// Removes every observation durably.
    pub fn clear_observations(&mut self) -> Result<(), StoreError> {
        self.write(|conn| conn.execute("DELETE FROM observations", []).map(drop))
    }
}

/// One observed peak of a finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Workload, settings and `model_loaded` it ran with (`max_vram_usage_gb` is not part of it).
    pub key: EstimateKey,
    /// Its peak VRAM, GiB.
    pub peak_vram_gb: f64,
    /// `nvml` (vramguard's reading of its pids) or `client` (the client's own figure).
    pub source: String,
    /// How the generation ended: `ok`, or `oom` (it needed more than this peak).
    pub outcome: Outcome,
    /// It counts for estimates: false for a client's figure the evidence did not bear out.
    pub used: bool,
    /// When it was recorded, Unix seconds.
    pub recorded_at: f64,
}

impl Observation {
    /// The peak as estimates read it.
    pub(crate) fn peak(&self) -> Peak {
        Peak { gb: self.peak_vram_gb, oom: self.outcome == Outcome::Oom }
    }
}

fn quantization_name(q: Quantization) -> &'static str {
    match q {
        Quantization::Fp16 => "fp16",
        Quantization::Bf16 => "bf16",
        Quantization::Int8 => "int8",
    }
}

fn quantization_from(s: &str) -> Quantization {
    match s {
        "fp16" => Quantization::Fp16,
        "int8" => Quantization::Int8,
        _ => Quantization::Bf16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let lease = Lease {
            id: "0123456789abcdef0123456789abcdef".to_owned(),
            gpu_index: Some(1),
            gpu_uuid: Some("GPU-B".to_owned()),
            vram_reserved_gb: 9.5,
            granted_at: 100.0,
            expires_at: 1000.0,
            ttl_seconds: 900,
            client: Some("worker-1".to_owned()),
            pids: vec![4242, 4243],
            pid_namespace: Some(4_026_532_175),
            pid_start_times: BTreeMap::from([(4242, 987_654)]),
            seen: true,
            unattributed_used_at_grant_gb: Some(2.5),
            vram_peak_gb: Some(8.25),
            overrun: false,
            grant: EstimateKey {
                workload: "i2v".to_owned(),
                settings: Optimization { quantization: Quantization::Int8, ..Optimization::default() },
                model_loaded: true,
                geometry: Some(Geometry { width: 832, height: 480, frames: 49 }),
            },
            owner: Some("worker-1".to_owned()),
            gang: Some(GangTie { id: "0123456789abcdef0123456789abcdee".to_owned(), rank: 1, size: 4 }),
        };
        {
            // Written into a batch that is never committed: not durable.
            let mut s = Store::open(dir.path()).unwrap();
            s.put_lease(&lease).unwrap();
            assert!(s.batch_open());
        }
        {
            let mut s = Store::open(dir.path()).unwrap();
            assert!(s.load_leases().unwrap().is_empty());
            s.put_lease(&lease).unwrap();
            s.put_lease(&Lease { expires_at: 2000.0, ..lease.clone() }).unwrap();
            assert_eq!(s.batch_marker(), 2);
            s.commit_batch().unwrap();
            assert!(!s.batch_open(), "both writes were in the one batch the commit closed");
        }
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(s.load_leases().unwrap(), vec![Lease { expires_at: 2000.0, ..lease.clone() }]);
        s.end_leases(std::slice::from_ref(&lease.id), &[]).unwrap();
        s.commit_batch().unwrap();
        assert!(s.load_leases().unwrap().is_empty());
    }
}
