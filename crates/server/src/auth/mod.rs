//! Who is calling and what they may do: API keys, tiers, signed result URLs.
//! No HTTP here; `api/` turns these decisions into status codes.

pub mod keys;
pub mod signing;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tools::{Tool, ToolRegistry};

/// A tier as declared in the configuration (`[tiers.NAME]`). Every limit is optional;
/// an absent one does not apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Requests of any kind per minute.
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Jobs submitted per `window_seconds` (a sliding window).
    #[serde(default)]
    pub jobs_per_window: Option<u64>,
    #[serde(default = "default_window")]
    pub window_seconds: u64,
    /// Jobs queued or running at once.
    #[serde(default)]
    pub concurrent_jobs: Option<u64>,
    /// Request size cap; the tool's own cap applies too (the smaller wins).
    #[serde(default)]
    pub max_request_bytes: Option<u64>,
    /// How long finished jobs are kept; the tool's own retention applies too (the
    /// shorter wins).
    #[serde(default)]
    pub retention_seconds: Option<u64>,
    /// Tools this tier may use: `name` (every version) or `name@version`. Absent: all.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// Higher runs first when jobs wait in the queue.
    #[serde(default)]
    pub priority: i32,
}

fn default_window() -> u64 {
    3600
}

impl Tier {
    pub fn allows(&self, tool: &Tool) -> bool {
        match &self.tools {
            None => true,
            Some(allowed) => allowed
                .iter()
                .any(|entry| *entry == tool.name || *entry == tool.id()),
        }
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_seconds.max(1))
    }
}

/// The tiers of a configuration, checked against its tools.
#[derive(Debug, Clone, Default)]
pub struct Tiers {
    tiers: BTreeMap<String, Arc<Tier>>,
}

impl Tiers {
    /// Checks that every tool a tier names exists.
    pub fn new(tiers: BTreeMap<String, Tier>, tools: &ToolRegistry) -> Result<Tiers, String> {
        for (name, tier) in &tiers {
            for (index, entry) in tier.tools.iter().flatten().enumerate() {
                if tools.resolve(entry).is_none() {
                    return Err(format!(
                        "tier `{name}`: field `tools[{index}]`: no tool `{entry}`"
                    ));
                }
            }
            if tier.window_seconds == 0 {
                return Err(format!(
                    "tier `{name}`: field `window_seconds`: must be positive"
                ));
            }
        }
        Ok(Tiers {
            tiers: tiers.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Tier>> {
        self.tiers.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tiers.keys().map(String::as_str)
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The owner recorded on jobs: the key's id, or empty for the anonymous caller of an
    /// open server.
    pub owner: String,
    pub tier_name: String,
    /// `None`: no tier limits (the anonymous caller of an open server without
    /// `anonymous_tier`).
    pub tier: Option<Arc<Tier>>,
    /// Sees and manages every caller's jobs.
    pub admin: bool,
}

impl Caller {
    /// The anonymous caller of an open server.
    pub fn anonymous(tiers: &Tiers, anonymous_tier: Option<&str>) -> Caller {
        Caller {
            owner: String::new(),
            tier_name: anonymous_tier.unwrap_or_default().to_owned(),
            tier: anonymous_tier.and_then(|name| tiers.get(name)),
            admin: false,
        }
    }

    /// May this caller see a job owned by `owner`?
    pub fn can_see(&self, owner: &str) -> bool {
        self.admin || self.owner == owner
    }

    /// The tool's request size cap, lowered by the tier's.
    pub fn max_request_bytes(&self, tool_cap: u64) -> u64 {
        match self.tier.as_ref().and_then(|tier| tier.max_request_bytes) {
            Some(cap) => cap.min(tool_cap),
            None => tool_cap,
        }
    }

    /// The tool's retention, shortened by the tier's.
    pub fn retention(&self, tool_retention: Duration) -> Duration {
        match self.tier.as_ref().and_then(|tier| tier.retention_seconds) {
            Some(seconds) => Duration::from_secs(seconds).min(tool_retention),
            None => tool_retention,
        }
    }

    pub fn priority(&self) -> i32 {
        self.tier.as_ref().map_or(0, |tier| tier.priority)
    }

    /// A label for logs and metrics: the tier's name, or `anonymous`.
    pub fn tier_label(&self) -> &str {
        if self.tier_name.is_empty() {
            "anonymous"
        } else {
            &self.tier_name
        }
    }
}
