//! A job's result (`NAME.result.json`) and the last results kept for the admin status:
//! plain data, shared by the runner, `job submit --wait` and the status page.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Done,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// `NAME.result.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobResult {
    pub job: String,
    pub action: String,
    pub status: JobStatus,
    pub started: String,
    pub finished: String,
    /// True when the job was found in processing/ after a crash and run again.
    #[serde(default)]
    pub rerun: bool,
    pub messages: Vec<String>,
    pub warnings: Vec<String>,
    pub outputs: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The last results, newest last, for the admin status.
pub type Recent = Arc<Mutex<VecDeque<JobResult>>>;
pub const RECENT: usize = 20;
