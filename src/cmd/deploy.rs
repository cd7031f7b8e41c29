//! `headstream deploy`, `pipelines`, `rollback` and `plugins ls --nats`: the cluster registry.

use anyhow::Context as _;
use headstream_pipeline::{Pipeline, parse_reference};
use headstream_registry::{ClusterRegistry, PackageRecord};

use crate::cli::{ConnectArgs, DeployCommand, PipelinesCommand};

/// Connects as `connect` says and opens the registry buckets.
async fn open(connect: &ConnectArgs) -> anyhow::Result<ClusterRegistry> {
    let client = super::serve::connect(connect).await?;
    Ok(ClusterRegistry::open(&client).await?)
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// `headstream deploy plugin|pipeline`.
pub fn deploy(command: &DeployCommand) -> anyhow::Result<()> {
    super::serve::runtime()?.block_on(async {
        match command {
            DeployCommand::Plugin { package, connect } => {
                let registry = open(connect).await?;
                let record = registry
                    .deploy_package(package)
                    .await
                    .with_context(|| format!("cannot deploy {}", package.display()))?;
                eprintln!("deployed plugin {}@{}", record.name, record.version);
                print_json(&record)
            }
            DeployCommand::Pipeline { file, connect } => {
                let pipeline = Pipeline::load(file)?;
                pipeline
                    .check_deployable()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let registry = open(connect).await?;
                let packages = registry.packages().await?;
                for head in pipeline.heads() {
                    for reference in head.references() {
                        resolve(&packages, reference.get_ref()).with_context(|| {
                            format!("{}: head {:?}", file.display(), head.name.get_ref())
                        })?;
                    }
                }
                let name = pipeline.name.get_ref();
                let revision = registry.deploy_pipeline(name, &text).await?;
                eprintln!("deployed pipeline {name} (revision {revision})");
                print_json(&serde_json::json!({ "name": name, "revision": revision }))
            }
        }
    })
}

/// Which stored package a reference resolves to, as hosts will resolve it.
fn resolve<'a>(
    packages: &'a [PackageRecord],
    reference: &str,
) -> anyhow::Result<&'a PackageRecord> {
    let (name, req) = parse_reference(reference)?;
    // As hosts resolve it: the newest version that meets the requirement.
    let found = packages
        .iter()
        .filter(|p| p.name == name)
        .filter_map(|p| semver::Version::parse(&p.version).ok().map(|v| (v, p)))
        .filter(|(v, p)| req.matches(v, &p.component_sha256))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, p)| p);
    found.ok_or_else(|| {
        let versions: Vec<&str> = packages
            .iter()
            .filter(|p| p.name == name)
            .map(|p| p.version.as_str())
            .collect();
        anyhow::anyhow!(
            "{reference:?} matches no package in the cluster registry (deployed versions of {name}: {versions:?}); deploy it first with `headstream deploy plugin`"
        )
    })
}

/// `headstream plugins ls --nats URL`.
pub fn list_plugins(connect: &ConnectArgs) -> anyhow::Result<()> {
    super::serve::runtime()?.block_on(async {
        for record in open(connect).await?.packages().await? {
            print_json(&record)?;
        }
        Ok(())
    })
}

/// `headstream pipelines ls|history|rm`.
pub fn pipelines(command: &PipelinesCommand) -> anyhow::Result<()> {
    super::serve::runtime()?.block_on(async {
        match command {
            PipelinesCommand::Ls { connect } => {
                for revision in open(connect).await?.pipelines().await? {
                    let heads = revision
                        .text
                        .as_deref()
                        .and_then(|t| Pipeline::parse(t, revision.name.as_ref()).ok())
                        .map(|p| {
                            p.heads()
                                .iter()
                                .map(|h| {
                                    let reference = h.plugin.as_ref().map(|r| r.get_ref().clone());
                                    (h.name.get_ref().clone(), reference)
                                })
                                .collect::<std::collections::BTreeMap<_, _>>()
                        });
                    print_json(&serde_json::json!({
                        "name": revision.name,
                        "revision": revision.revision,
                        "created": revision.created,
                        "heads": heads,
                    }))?;
                }
                Ok(())
            }
            PipelinesCommand::History { name, connect } => {
                for revision in open(connect).await?.history(name).await? {
                    print_json(&revision)?;
                }
                Ok(())
            }
            PipelinesCommand::Rm { name, connect } => {
                open(connect).await?.remove_pipeline(name).await?;
                eprintln!("removed pipeline {name} (rollback restores it)");
                Ok(())
            }
        }
    })
}

/// `headstream rollback pipeline NAME [--to REVISION]`.
pub fn rollback(name: &str, to: Option<u64>, connect: &ConnectArgs) -> anyhow::Result<()> {
    super::serve::runtime()?.block_on(async {
        let check = |text: &str| {
            let path = std::path::PathBuf::from(format!("{name}.toml"));
            let pipeline = Pipeline::parse(text, &path).map_err(|e| e.to_string())?;
            pipeline.check_deployable().map_err(|e| e.to_string())
        };
        let (restored, revision) = open(connect).await?.rollback(name, to, check).await?;
        eprintln!("pipeline {name}: revision {restored} restored as revision {revision}");
        print_json(&serde_json::json!({ "name": name, "restored": restored, "revision": revision }))
    })
}
