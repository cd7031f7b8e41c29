//! `headstream new-head NAME [--lang rust|python|js]`: scaffold a task head from
//! `plugins/template` (Rust), `plugins/template-python` or `plugins/template-js`.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::cli::{HeadLang, NewHeadArgs};

const TEMPLATE_MANIFEST: &str = include_str!("../../plugins/template/Cargo.toml");
const TEMPLATE_LIB: &str = include_str!("../../plugins/template/src/lib.rs");
const TEMPLATE_PY: &str = include_str!("../../plugins/template-python/app.py");
const TEMPLATE_JS: &str = include_str!("../../plugins/template-js/head.js");

/// Writes `DIR/NAME/` from the language's template; a Rust crate also joins `DIR/Cargo.toml`'s
/// members.
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
    match args.lang {
        HeadLang::Rust => {}
        HeadLang::Python => return scaffold_script(args, &dir, TEMPLATE_PY, "app.py"),
        HeadLang::Js => {
            // The head imports the SDK by a relative path, as the Rust template names its crate.
            if !args.dir.join("sdk-js/headstream.js").is_file() {
                bail!(
                    "{} has no sdk-js/headstream.js: run new-head from a headstream checkout (--dir plugins)",
                    args.dir.display()
                );
            }
            return scaffold_script(args, &dir, TEMPLATE_JS, "head.js");
        }
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

/// Writes `DIR/NAME/<file>` from a script template: the head's name in its description and
/// first line, its class named after it.
fn scaffold_script(
    args: &NewHeadArgs,
    dir: &Path,
    template: &str,
    file: &str,
) -> anyhow::Result<()> {
    let name = args.name.as_str();
    let text = template
        .replace("\"template\", \"0.1.0\"", &format!("\"{name}\", \"0.1.0\""))
        .replace("`template`:", &format!("`{name}`:"))
        .replace("Template", &class_name(name));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write(&dir.join(file), &text)?;
    let build = args.dir.join("build.sh");
    eprintln!(
        "created {dir}; build it with `{build} {dir}`: the component is target/heads/{name}.wasm",
        dir = dir.display(),
        build = build.display(),
    );
    Ok(())
}

/// `support-triage` -> `SupportTriage`.
fn class_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
