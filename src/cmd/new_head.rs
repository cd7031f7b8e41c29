//! `headstream new-head NAME`: scaffold a task-head plugin from `plugins/template`.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::cli::NewHeadArgs;

const TEMPLATE_MANIFEST: &str = include_str!("../../plugins/template/Cargo.toml");
const TEMPLATE_LIB: &str = include_str!("../../plugins/template/src/lib.rs");

/// Writes `DIR/NAME/{Cargo.toml,src/lib.rs}` and adds the crate to `DIR/Cargo.toml`'s members.
pub fn run(args: &NewHeadArgs) -> anyhow::Result<()> {
    let name = args.name.as_str();
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        bail!(
            "head name {name:?} must be lowercase letters, digits and '-', starting with a letter"
        );
    }
    let dir = args.dir.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let manifest = TEMPLATE_MANIFEST.replace("name = \"template\"", &format!("name = \"{name}\""));
    let lib = TEMPLATE_LIB
        .replace("describe(\"template\"", &format!("describe(\"{name}\""))
        .replace("//! `template`: the starting point for a new head (`headstream new-head NAME` copies it).", &format!("//! `{name}`: a headstream task head (scaffolded from plugins/template)."));
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    write(&dir.join("Cargo.toml"), &manifest)?;
    write(&dir.join("src/lib.rs"), &lib)?;
    let workspace = args.dir.join("Cargo.toml");
    if workspace.is_file() {
        let text = std::fs::read_to_string(&workspace)
            .with_context(|| format!("cannot read {}", workspace.display()))?;
        let Some(at) = text.find("members = [") else {
            bail!(
                "{} has no `members = [` list to add {name} to",
                workspace.display()
            );
        };
        let insert = at + "members = [".len();
        let updated = format!("{}\n    \"{name}\",{}", &text[..insert], &text[insert..]);
        write(&workspace, &updated)?;
    }
    eprintln!(
        "created {dir}; build it with `cargo plugins`: the component is target/wasm32-wasip2/release/{file}.wasm",
        dir = dir.display(),
        file = name.replace('-', "_")
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
