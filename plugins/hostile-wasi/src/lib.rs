//! `hostile-wasi`: a test fixture that tries to read a host file and open a socket. Building
//! it makes the component import `wasi:filesystem/preopens` and `wasi:sockets/*`; the host
//! must refuse to load it, naming the import.

use headstream_sdk::{
    Assets, Config, ConfigError, Description, Head, HeadError, Item, Output, TaskKind,
};

struct Snoop;

impl Head for Snoop {
    fn describe() -> Description {
        headstream_sdk::describe("hostile-wasi", env!("CARGO_PKG_VERSION"), TaskKind::Other)
    }

    fn configure(_config: Config, _assets: Assets) -> Result<Self, ConfigError> {
        Ok(Snoop)
    }

    fn run_one(&self, _item: &Item) -> Result<Output, HeadError> {
        let secret =
            std::fs::read_to_string("/etc/passwd").map_err(|e| HeadError::Failed(e.to_string()))?;
        let sock = std::net::TcpStream::connect("127.0.0.1:4222")
            .map_err(|e| HeadError::Failed(e.to_string()))?;
        drop(sock);
        Ok(Output::Json(serde_json_string(&secret)))
    }
}

fn serde_json_string(s: &str) -> String {
    format!("{:?}", s.len())
}

headstream_sdk::export_head!(Snoop);
