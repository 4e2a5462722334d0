//! `portcullis cluster …` and the CLI's writes on a cluster node: each runs on a scratch
//! copy read from etcd and commits as one guarded transaction (see `crate::cluster`).

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use serde::Serialize;

use super::{Ctx, print_json, print_table};
use crate::cluster::{Cluster, Work};
use crate::config;
use crate::store::{Store, mirror};

pub use super::args::ClusterCommand;

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn config_of(ctx: &Ctx) -> Result<&config::Cluster> {
    let source = ctx.config.source.as_ref().map_or("the configuration".into(), |p| p.display().to_string());
    ctx.config.cluster.as_ref().ok_or_else(|| {
        anyhow!("{source}: no [cluster] section; set etcd, node and secret_key_file (see docs/CLUSTER.md)")
    })
}

/// Runs `f` on a scratch copy of the cluster's store and commits what it changed.
pub(super) fn write<T>(
    ctx: &Ctx,
    cfg: &config::Cluster,
    f: impl FnOnce(&mut Store) -> Result<Option<T>>,
) -> Result<Option<T>> {
    runtime()?.block_on(async {
        let cluster = Cluster::connect(cfg).await?;
        let work = Work::begin(&cluster, &ctx.store_dir).await?;
        let out = {
            let mut store = Store::open(work.dir())?;
            f(&mut store)?
        };
        work.commit(&cluster, None, &ctx.store_dir).await?;
        Ok(out)
    })
}

#[derive(Serialize)]
struct StatusOut {
    prefix: String,
    endpoints: String,
    revision: i64,
    members: Vec<String>,
    renewer: Option<String>,
    nodes: Vec<NodeOut>,
}

#[derive(Serialize)]
struct NodeOut {
    node: String,
    version: String,
    applied: i64,
    lag: i64,
    last_error: Option<String>,
}

pub(super) fn command(ctx: &Ctx, cmd: ClusterCommand) -> Result<ExitCode> {
    let cfg = config_of(ctx)?;
    runtime()?.block_on(async {
        let cluster = Cluster::connect(cfg).await?;
        match cmd {
            ClusterCommand::Init => {
                let store = ctx.open_store()?;
                let files = mirror::read_all(store.root())?;
                drop(store);
                let rev = cluster.init(&files).await?;
                crate::cluster::refresh(&cluster, &ctx.store_dir).await?;
                println!(
                    "cluster {} created at etcd revision {rev} from store {} ({} files; private keys sealed with cluster key {})",
                    cluster.prefix(),
                    ctx.store_dir.display(),
                    files.len(),
                    cluster.key_id()
                );
            }
            ClusterCommand::Join => {
                cluster.check().await?;
                let rev = crate::cluster::refresh(&cluster, &ctx.store_dir).await?;
                println!(
                    "node {} joined cluster {}: store {} materialised at etcd revision {rev}",
                    cluster.node(),
                    cluster.prefix(),
                    ctx.store_dir.display()
                );
            }
            ClusterCommand::Rekey => {
                cluster.check().await?;
                let n = cluster.rekey().await?;
                println!("{n} private value(s) sealed again with cluster key {}", cluster.key_id());
            }
            ClusterCommand::Status => {
                let meta = cluster.check().await?;
                let image = cluster.read().await?;
                let changed = cluster.last_change().await?;
                let out = StatusOut {
                    prefix: cluster.prefix().to_owned(),
                    endpoints: cluster.endpoints(),
                    revision: image.revision,
                    members: cluster.members().await,
                    renewer: cluster.renewer().await?,
                    nodes: cluster
                        .nodes()
                        .await?
                        .into_iter()
                        .map(|n| NodeOut {
                            lag: (changed - n.applied).max(0),
                            node: n.node,
                            version: n.version,
                            applied: n.applied,
                            last_error: n.last_error,
                        })
                        .collect(),
                };
                if ctx.json {
                    print_json(&out)?;
                } else {
                    println!("cluster:   {} on etcd {}", out.prefix, out.endpoints);
                    println!("revision:  {} (cluster key {})", out.revision, meta.key_id);
                    for m in &out.members {
                        println!("member:    {m}");
                    }
                    println!("renewer:   {}", out.renewer.as_deref().unwrap_or("none elected"));
                    let rows: Vec<Vec<String>> = out
                        .nodes
                        .iter()
                        .map(|n| {
                            vec![
                                n.node.clone(),
                                n.applied.to_string(),
                                n.lag.to_string(),
                                n.version.clone(),
                                n.last_error.clone().unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect();
                    print_table(&["NODE", "APPLIED", "LAG", "VERSION", "LAST ERROR"], &rows, None);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
