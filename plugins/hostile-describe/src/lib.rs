//! `hostile-describe`: a test fixture whose self-description would bloat everything that names
//! it — a 1 MiB version string (every result carries `name@version`) and 100,000 labels. The
//! host must refuse to load it, naming what is wrong.

use headstream_sdk::{
    Assets, Config, ConfigError, Description, Head, HeadError, Item, Output, TaskKind,
};

struct Bloated;

impl Head for Bloated {
    fn describe() -> Description {
        let version = format!("1.0.0-{}", "x".repeat(1 << 20));
        let mut description =
            headstream_sdk::describe("hostile-describe", &version, TaskKind::Classify);
        description.labels = (0..100_000).map(|i| format!("label-{i}")).collect();
        description
    }

    fn configure(_config: Config, _assets: Assets) -> Result<Self, ConfigError> {
        Ok(Bloated)
    }

    fn run_one(&self, _item: &Item) -> Result<Output, HeadError> {
        Err(HeadError::Failed("never loaded".into()))
    }
}

headstream_sdk::export_head!(Bloated);
